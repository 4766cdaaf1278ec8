"""The study driver end to end on the smoke preset: two arms, two seeds."""
import json
import os

import pytest

from mlic.study import PAPER_L2, RELEASED, get_preset, run_study
from mlic.study.pipeline import RATE_ARMS
from mlic.cli.study import main as study_main
from mlic.cli.study import parse_seeds


@pytest.fixture(scope="module")
def smoke_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    lines = []
    summary = run_study(get_preset("smoke"), [0, 1], str(out), [RELEASED, PAPER_L2], workers=2, log=lines.append,
                        rates=[0.02])
    return out / "smoke", summary, lines


def test_table_plot_and_json(smoke_study):
    root, summary, _ = smoke_study
    assert (root / "study.png").stat().st_size > 10_000
    table = (root / "table.md").read_text()
    for label in ("no KD (student alone)", "(released switches)", "l2, teacher caffe-decay"):
        assert label in table
    # each row: the model's name, its settings and its folder
    rows = {line.split(" | ")[2].strip("`"): line.split(" | ")[0].lstrip("| ") for line in table.splitlines()
            if line.startswith("| ") and " | `" in line}
    assert rows[RELEASED.key] == "student, KD as released (soft cross-entropy)"
    assert rows[PAPER_L2.key] == "student, KD with the paper's L2 loss"
    assert rows["nokd"] == "student without KD"
    assert rows["nokd-equal-budget"].startswith("student without KD, trained as long as stage 1 + stage 2")
    data = json.loads((root / "study.json").read_text())
    arms = data["arms"]
    assert set(arms) == {RELEASED.key, PAPER_L2.key, "nokd", "nokd-equal-budget"}
    assert arms[PAPER_L2.key]["name"] == rows[PAPER_L2.key]
    for key in (RELEASED.key, PAPER_L2.key):
        a = arms[key]
        assert a["seeds"] == [0, 1] and set(a["seconds"]) == {"0", "1"}
        for m in ("mAP", "CF1", "OF1", "CF1_top3", "OF1_top3"):
            p = a["paired"][m]
            assert p["n"] == 2
            # the paired mean is the mean of the per-seed differences of the recorded values
            base = arms["nokd"]["metrics"][m]["values"]
            ours = a["metrics"][m]["values"]
            assert p["mean"] == pytest.approx(sum(x - y for x, y in zip(ours, base)) / 2)
            assert p["low"] <= p["mean"] <= p["high"]
            # and against the student alone at the arm's budget (stage 1 + stage 2 iterations)
            q = a["paired_equal"][m]
            equal = arms["nokd-equal-budget"]["metrics"][m]["values"]
            assert q["mean"] == pytest.approx(sum(x - y for x, y in zip(ours, equal)) / 2)
    assert "at the same budget" in table
    # the teacher's CorLoc beside what the proposals alone give on each seed's test set
    refs = data["corloc_references"]
    assert set(refs) == {"0", "1"}
    for r in refs.values():
        assert 0 <= r["random"] <= r["best"] <= 1 and 0 <= r["proposal_score"] <= r["best"]
    assert "CorLoc of a random proposal" in table and "the best proposal" in table


def test_untuned_rate_table(smoke_study):
    root, summary, _ = smoke_study
    assert "At base rate 0.02" in (root / "table.md").read_text()
    at = json.loads((root / "study.json").read_text())["at_rate"]["0.02"]
    assert set(at) == {a.key for a in RATE_ARMS} | {"nokd"}
    for key in at:
        cfg = json.loads((root / "seed0" / "lr0.02" / key / "result.json").read_text())["config"]
        assert cfg["solver"]["base_lr"] == pytest.approx(0.02)
    mults = {json.loads((root / "seed0" / "lr0.02" / a.key / "result.json").read_text())["config"]["net"]
             ["multipliers"]["soft_scale"][0][0] for a in RATE_ARMS}
    assert mults == {10.0, 1.0}


def test_one_process_per_job_and_resume(smoke_study):
    root, _, _ = smoke_study
    results = sorted(root.glob("seed*/*/result.json"))
    assert len(results) == 2 * 7  # stand-in, teacher, stage 1, two arms, two baselines
    pids = {json.loads(p.read_text())["pid"] for p in results}
    assert len(pids) == len(results) and os.getpid() not in pids
    # an interrupted study: one job lost its result; rerunning redoes that job only
    victim = root / "seed1" / PAPER_L2.key / "result.json"
    before = {p: p.stat().st_mtime_ns for p in results if p != victim}
    victim.unlink()
    lines = []
    run_study(get_preset("smoke"), [0, 1], str(root.parent), [RELEASED, PAPER_L2], workers=2, log=lines.append)
    assert victim.is_file()
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())
    assert sum(line.startswith("[study] start ") for line in lines) == 1


def test_seed_parsing_and_bad_arguments(capsys):
    assert parse_seeds("0-2,5") == [0, 1, 2, 5]
    with pytest.raises(ValueError):
        parse_seeds("3-1")
    assert study_main(["--seeds", "x"]) == 2
    assert "--seeds" in capsys.readouterr().err
    assert study_main(["--arms", "kd-nonsense"]) == 2
    assert study_main(["--alone-budgets", "0"]) == 2
    assert "--alone-budgets: '0' is not a positive number" in capsys.readouterr().err
    assert study_main(["--alone-budgets", "900"]) == 2
    assert "--alone-budgets needs --budget-arm" in capsys.readouterr().err


def test_a_study_folder_in_use_or_a_file_is_refused_before_anything_is_written(tmp_path, capsys):
    from mlic.engine.run_lock import hold_folder

    root = tmp_path / "smoke"
    root.mkdir()
    with hold_folder(root):
        assert study_main(["--preset", "smoke", "--seeds", "0", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--out {root} is in use by another run (process {os.getpid()} on " in err[0], err
    assert sorted(p.name for p in root.iterdir()) == ["run.lock"]
    (tmp_path / "file").write_text("x")
    assert study_main(["--preset", "smoke", "--seeds", "0", "--out", str(tmp_path / "file")]) == 2
    assert "--out " + str(tmp_path / "file" / "smoke") + ": cannot create the folder" in capsys.readouterr().err


@pytest.mark.slow
def test_budget_sweep_and_the_decision(tmp_path_factory):
    """--budgets trains the student alone and the swept arm at every total; decision.json's
    numbers follow from the jobs' own results (paired differences, scipy's paired t test,
    Holm over the arms) and the sweep's points name the jobs that train them."""
    from scipy import stats as sst

    from mlic.study.pipeline import Arm, budget_key
    from mlic.study.stats import holm

    out = tmp_path_factory.mktemp("decide")
    preset = get_preset("smoke")
    arm = Arm(regions="topk")
    run_study(preset, [0, 1], str(out), [RELEASED, arm], workers=2, log=lambda m: None, budgets=[3, 5, 9],
              budget_arm=arm, tune_seeds=[1], alone_budgets=[12])
    root = out / "smoke"
    # the choices made again on seed 1's validation split are reported, and seed 1 keeps the teacher
    # trained at seed 0's choice
    other = json.loads((root / "tuning_seed1.json").read_text())
    assert other["seed"] == 1 and set(other["chosen"]) == set(json.loads((root / "tuning.json").read_text())["chosen"])
    assert "On seed 1's validation split the same procedure chooses" in (root / "table.md").read_text()
    chosen_lr = json.loads((root / "tuning.json").read_text())["chosen"]["teacher_lr"]
    teacher_cfg = json.loads((root / "seed1" / "teacher" / "result.json").read_text())["config"]
    assert teacher_cfg["solver"]["base_lr"] == chosen_lr
    d = json.loads((root / "decision.json").read_text())
    assert (root / "decision.md").is_file() and (root / "budget.png").stat().st_size > 10_000
    assert (root / "seeds.png").stat().st_size > 5_000
    from mlic.study import names

    assert [r["name"] for r in d["arms"]] == [names.name(a.key) for a in (RELEASED, arm)]
    assert f"| {names.name(arm.key)} |" in (root / "decision.md").read_text()

    def mAP(seed, key):
        r = json.loads((root / f"seed{seed}" / key / "result.json").read_text())
        return 100 * r["metrics"]["test"]["mAP"]

    total = preset.iters["stage1"] + preset.iters["stage2"]
    ps = []
    for row, a in zip(d["arms"], (RELEASED, arm)):
        sb = row["same_budget"]
        mine = [mAP(s, a.key) for s in (0, 1)]
        alone = [mAP(s, "nokd-equal-budget") for s in (0, 1)]
        assert row["total_iterations"] == total
        assert sb["mean"] == pytest.approx(sum(x - y for x, y in zip(mine, alone)) / 2)
        assert sb["p"] == pytest.approx(sst.ttest_rel(mine, alone).pvalue)
        # the 90 % interval (two one-sided tests at 5 %) lies inside the 95 % one
        assert abs(sb["mean"]) < sb["equivalence_margin"] < max(abs(sb["low"]), abs(sb["high"]))
        ps.append(sb["p"])
    assert [r["same_budget"]["p_holm"] for r in d["arms"]] == pytest.approx(holm(ps))
    assert [p["total_iterations"] for p in d["sweep"]] == [3, 5, 9, 12]
    # the student alone only at --alone-budgets' total: no arm job, no arm point
    assert not (root / "seed0" / "budget" / f"{arm.key}-12").exists() and d["sweep"][-1]["arm"] is None
    assert d["sweep"][-1]["gap"] is None and d["sweep"][-1]["arm_seconds"] is None
    for p in d["sweep"][:-1]:
        t = p["total_iterations"]
        assert budget_key(preset, None, t) == {3: "nokd", 5: "nokd-equal-budget", 9: "budget/nokd-9"}[t]
        assert p["alone"]["values"] == {str(s): pytest.approx(mAP(s, budget_key(preset, None, t))) for s in (0, 1)}
        assert p["arm"]["values"] == {str(s): pytest.approx(mAP(s, budget_key(preset, arm, t))) for s in (0, 1)}
    import numpy as np

    # a run's time: the jobs' recorded seconds (the arm's stage 1 and stage 2 together), median
    # over seeds; equal compute pairs the arm with the student alone at the longest budget that
    # took no more time and at the shortest that took no less
    def secs(seed, key):
        return json.loads((root / f"seed{seed}" / key / "result.json").read_text())["seconds"]

    alone_t = {p["total_iterations"]: float(np.median([secs(s, budget_key(preset, None, p["total_iterations"]))
                                                       for s in (0, 1)])) for p in d["sweep"]}
    for p in d["sweep"][:-1]:
        t = p["total_iterations"]
        assert p["alone_seconds"] == pytest.approx(alone_t[t])
        arm_t = float(np.median([secs(s, budget_key(preset, arm, t)) + secs(s, arm.stage1_key) for s in (0, 1)]))
        assert p["arm_seconds"] == pytest.approx(arm_t)
        eq = p["equal_compute"]
        for side, picks in (("no_more_time", [u for u in sorted(alone_t) if alone_t[u] <= arm_t][-1:]),
                            ("no_less_time", [u for u in sorted(alone_t) if alone_t[u] >= arm_t][:1])):
            if not picks:
                assert eq[side] is None
                continue
            assert eq[side]["alone_total_iterations"] == picks[0]
            want = [mAP(s, budget_key(preset, arm, t)) - mAP(s, budget_key(preset, None, picks[0])) for s in (0, 1)]
            assert eq[side]["gap"]["mean"] == pytest.approx(sum(want) / 2)
    assert "gap, alone given no more time" in (root / "decision.md").read_text()
    # the arm at 9 iterations in all: stage 1 as before, stage 2 for the rest
    cfg = json.loads((root / "seed0" / "budget" / f"{arm.key}-9" / "result.json").read_text())["config"]
    assert cfg["solver"]["max_iter"] == 9 - preset.iters["stage1"]
    # per class: the AP gain against scikit-learn's AP on the jobs' own score files
    from sklearn.metrics import average_precision_score

    from mlic.evaluation import load_scores

    gains = []
    for seed in (0, 1):
        a, b = (load_scores(root / f"seed{seed}" / k / "test_test" / "scores.csv") for k in (arm.key, "nokd-equal-budget"))
        gains.append([100 * (average_precision_score(a.labels[:, c], a.scores[:, c]) -
                             average_precision_score(b.labels[:, c], b.scores[:, c])) if b.labels[:, c].any()
                      else np.nan for c in range(preset.classes)])
    expect = np.nanmean(np.array(gains), 0)
    got = np.array(d["per_class"]["gain_ap"])
    assert np.allclose(got[~np.isnan(expect)], expect[~np.isnan(expect)])
    assert len(d["per_class"]["teacher_corloc"]) == preset.classes


def test_teacher_corloc_per_class_matches_the_test_job_and_is_kept(smoke_study, monkeypatch):
    """The per-class CorLoc behind the decision's class table averages to the CorLoc the
    teacher's test job recorded; it is kept under the weights' hash, so the report does
    not run the teacher again, and measured anew for other weights."""
    import numpy as np

    from mlic.study import decision

    root, _, _ = smoke_study
    folder, preset = root / "seed0", get_preset("smoke")
    cache = folder / "teacher" / "test_test" / decision.CORLOC_CACHE
    cache.unlink(missing_ok=True)
    first = decision.teacher_corloc_per_class(preset, folder)
    recorded = json.loads((folder / "teacher" / "test_test" / "metrics.json").read_text())["CorLoc"]
    assert len(first) == preset.classes and np.nanmean(first) == pytest.approx(recorded)
    assert json.loads(cache.read_text())["weights_sha256"] == \
        (folder / "teacher" / "final.pt.sha256").read_text().split()[0]

    def no_forward(*a, **k):
        raise AssertionError("the teacher ran again")

    monkeypatch.setattr(decision, "_measure_teacher_corloc", no_forward)
    np.testing.assert_array_equal(decision.teacher_corloc_per_class(preset, folder), first)
    saved = json.loads(cache.read_text())
    cache.write_text(json.dumps(dict(saved, weights_sha256="0" * 64)))
    with pytest.raises(AssertionError, match="ran again"):
        decision.teacher_corloc_per_class(preset, folder)
