"""The demo end to end on the smoke preset, its results table, and how it finds the
README's numbers."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mlic import demo
from mlic.cli.demo import main
from mlic.demo import ARMS, ROWS, seed_jobs
from mlic.study import names
from mlic.study.pipeline import BASELINE, PAPER_L2, RELEASED
from mlic.study.presets import get_preset

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_smoke_end_to_end_small_redirected_log_and_clean_rerun(tmp_path):
    log = tmp_path / "demo.log"
    with open(log, "w") as f:  # the console sent to a file, as a user's `make demo > log`
        r = subprocess.run([sys.executable, str(REPO / "tools" / "demo.py"), "--preset", "smoke", "--out",
                            str(tmp_path)], stdout=f, stderr=subprocess.STDOUT, timeout=1800,
                           env=dict(os.environ, PYTHONPATH=str(REPO)))
    text = log.read_text()
    assert r.returncode == 0, text[-3000:]
    assert "\r" not in text and max(map(len, text.splitlines())) < 1000 and len(text.encode()) < 100_000
    # the console speaks of the models by name, in the demo's own voice, with the phases' times
    assert not [line for line in text.splitlines() if line.startswith("[study]")]
    for phase in ("[demo] (1) the synthetic images: typically", "[demo] (2) 6 training steps",
                  "[demo] (3) the test results and figures (typically"):
        assert phase in text
    assert f"[demo] start seed 0: {names.name(RELEASED.key)} [seed0/{RELEASED.key}]" in text
    # a step's typical time is promised only where the steps print one
    starts = [line for line in text.splitlines() if line.startswith("[demo] start ")]
    promised = "each says its typical time when it starts" in text
    assert len(starts) == 6 and all(("(typically" in line) == promised for line in starts)
    left = [int(n) * (60 if unit == "min" else 1) for n, unit in re.findall(r"about (\d+) (s|min) left", text)]
    assert len(left) == 6 and left == sorted(left, reverse=True)
    run = tmp_path / "smoke" / "seed0"
    # every step knew its label count: the datalist reader never had to infer it
    for f in [log] + sorted(run.glob("*/job.log")):
        assert "no label count" not in f.read_text(), f
    summary = json.loads((run / "results.json").read_text())
    res = summary["results"]
    assert set(res) == {key for key, _ in ROWS} and len(ARMS) == 2
    assert "CorLoc" in res["teacher"] and "CorLoc" not in res[BASELINE]
    models = summary["models"]
    assert [models[k]["name"] for k, _ in ROWS] == [n for _, n in ROWS]
    p = get_preset("smoke")
    assert models[RELEASED.key]["iterations"] == {"stage 1": p.iters["stage1"], "stage 2": p.iters["stage2"]}
    assert models[BASELINE]["iterations"] == {"training": p.iters["student"]}
    assert models[PAPER_L2.key]["delta_vs_student_without_kd"]["mAP"] == pytest.approx(
        res[PAPER_L2.key]["mAP"] - res[BASELINE]["mAP"])
    table = (run / "results.md").read_text()
    assert "seed 0" in table and "The smoke preset checks that the pipeline runs, not the method" in table
    for key, name in ROWS:
        assert f"| {name} | `{key}` |" in table
    delta = 100 * (res[RELEASED.key]["mAP"] - res[BASELINE]["mAP"])
    row = next(line for line in table.splitlines() if line.startswith(f"| {names.name(RELEASED.key)} |"))
    assert f"| {p.iters['stage1']} + {p.iters['stage2']} |" in row and f"{delta:+.1f}" in row
    assert "README, seeds" not in table  # the README's numbers are the demo preset's, not the smoke's
    figs = {q.name for q in (run / "figures").iterdir()}
    assert {"pr_curves.png", "kd_diagnostics.png", "qualitative_0.png",
            *(f"training_{k}.png" for k in ("pretrain", "teacher", RELEASED.stage1_key, RELEASED.key, PAPER_L2.key,
                                            BASELINE))} <= figs
    assert set(summary["figures"]) == figs  # each figure has its caption
    assert summary["figures"][f"training_{RELEASED.key}.png"].endswith("during stage 2")  # its log is stage 2's
    for f in figs:
        assert f"- `{f}`: " in table
    # a rerun replaces the seed's folder: a stale file goes, the generated data stay
    (run / "stale.txt").write_text("old")
    data_marker = (run / "data" / "complete.json").stat().st_mtime_ns
    assert main(["--preset", "smoke", "--out", str(tmp_path)]) == 0
    assert not (run / "stale.txt").exists()
    assert (run / "data" / "complete.json").stat().st_mtime_ns == data_marker
    # every stage ran in its own process, in both runs: same seed, same numbers
    assert json.loads((run / "results.json").read_text())["results"] == res
    # the README's commands that take the demo's models run on this seed's folder
    _run_readme_block_on(run, tmp_path / "clone")
    assert (run / "student.pt").is_file() and (run / "labelled.png").is_file()


def _run_readme_block_on(run, ws):
    """Runs the README's block that reads a demo run (RUN) from a folder laid out as a clone."""
    from mlic.cli import check_readme

    block = next(b for b in check_readme.readme_blocks() if '"${RUN:=demo_out/' in b.text)
    (ws / ".venv" / "bin").mkdir(parents=True)
    (ws / "tools").symlink_to(REPO / "tools")
    (ws / ".venv" / "bin" / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (ws / ".venv" / "bin" / "python").chmod(0o755)
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", block.text], cwd=ws, capture_output=True, text=True,
                       timeout=600, env=dict(os.environ, RUN=str(run), PYTHONPATH=str(REPO), MLIC_NO_PROGRESS="1"))
    assert r.returncode == 0, f"README.md:{block.line}: {r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    classes = (run / "data" / "classes.txt").read_text().split()
    assert sum(c in r.stdout for c in classes) == 3  # its top 3 labels, by the demo's class names


def test_demo_bad_arguments(capsys):
    assert main(["--seeds", "a"]) == 2
    assert "--seeds" in capsys.readouterr().err
    assert main(["--workers", "0"]) == 2


def test_a_demo_seed_in_use_is_refused_and_keeps_its_files(tmp_path, capsys):
    """A second demo on a seed another one is running would delete that one's jobs."""
    from mlic.engine.run_lock import hold_folder

    run = tmp_path / "smoke" / "seed0"
    run.mkdir(parents=True)
    (run / "results.md").write_text("an earlier run")
    with hold_folder(run):
        assert main(["--preset", "smoke", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--out {run} is in use by another run (process {os.getpid()} on " in err[0], err
    assert (run / "results.md").read_text() == "an earlier run"


def _results(map_, cf1, of1, top3_same=True):
    out = {}
    for (key, _), m, c, o in zip(ROWS, map_, cf1, of1):
        out[key] = {"mAP": m, "CF1": c, "OF1": o, "CF1_top3": c if top3_same else c - 0.05, "OF1_top3": o}
    out["teacher"].update(CorLoc=0.7, det_mAP=0.42)
    return out


ITERATIONS = {"teacher": {"training": 1000}, RELEASED.key: {"stage 1": 500, "stage 2": 1000},
              PAPER_L2.key: {"stage 1": 500, "stage 2": 1000}, BASELINE: {"training": 1000}}


def test_results_table_gives_delta_iterations_and_the_readmes_row_under_each_model():
    results = _results([0.95, 0.874, 0.89, 0.866], [0.89, 0.775, 0.78, 0.75], [0.889, 0.77, 0.776, 0.741])
    reference = {"seeds": "0–4", "teacher": {"CorLoc": "71.8 ± 2.6"},
                 "rows": {names.name(RELEASED.key): {"mAP": "87.4 ± 1.2", "CF1": "77.5 ± 1.3", "OF1": "77.0 ± 1.6",
                                                     "Δ mAP": "+1.0 [−0.8, +2.7]"}}}
    text = demo.format_results(results, get_preset("demo"), 3, ITERATIONS, reference, {"pr_curves.png": "curves"})
    lines = text.splitlines()
    assert lines[0] == "# Demo results: preset `demo`, seed 3"
    head = next(line for line in lines if line.startswith("| model |"))
    assert "top-3" not in head  # with 4 classes they nearly repeat CF1 / OF1: left out, and said so
    assert "CF1 and OF1 top-3 (in results.json) stay within 0.0 points of CF1 and OF1 here" in text
    k = lines.index(next(line for line in lines if line.startswith(f"| {names.name(RELEASED.key)} |")))
    assert lines[k] == (f"| {names.name(RELEASED.key)} | `{RELEASED.key}` | 500 + 1,000 | 87.4 | 77.5 | 77.0 | "
                        "+0.8 | +2.5 | +2.9 |")
    assert lines[k + 1] == ("| ↳ README, seeds 0–4 | | | 87.4 ± 1.2 | 77.5 ± 1.3 | 77.0 ± 1.6 | +1.0 [−0.8, +2.7] "
                            "|  |  |")
    base = next(line for line in lines if line.startswith(f"| {names.name(BASELINE)} |"))
    assert base.endswith("| 86.6 | 75.0 | 74.1 |  |  |  |")  # no Δ against itself
    assert "Teacher: CorLoc 70.0 % (README 71.8 ± 2.6), detection mAP 42.0." in text
    assert "section \"Measured\"" in text and "- `pr_curves.png`: curves" in text
    results = _results([0.5] * 4, [0.4] * 4, [0.3] * 4, top3_same=False)
    text = demo.format_results(results, get_preset("demo"), 0, ITERATIONS)
    assert "stay within 5.0 points of CF1 and OF1 here" in text
    # with more classes the top-3 columns are the table's
    text = demo.format_results(results, get_preset("large"), 0, ITERATIONS)
    assert "| CF1 top-3 | OF1 top-3 |" in text and "stay within" not in text
    row = next(line for line in text.splitlines() if line.startswith(f"| {names.name(BASELINE)} |"))
    assert "| 40.0 | 30.0 | 35.0 | 30.0 |" in row
    assert "README" not in text.split("Figures")[0].replace("the README's", "")


def test_the_readmes_measured_table_has_a_row_for_every_demo_model():
    ref = demo.readme_reference()
    assert ref is not None and ref["seeds"] == "0–9"
    assert set(ref["rows"]) == {name for _, name in ROWS}
    for name in (n for k, n in ROWS if k != "teacher"):
        assert re.fullmatch(r"\d+\.\d ± \d+\.\d", ref["rows"][name]["mAP"])
    assert set(ref["teacher"]) == {"CorLoc", "det_mAP"}
    # and the README's table of folders and names is the one the demo prints
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for key in ("pretrain", "teacher", RELEASED.stage1_key, RELEASED.key, PAPER_L2.key, BASELINE):
        assert f"| `{key}` | {names.name(key)} |" in readme


def test_readme_reference_without_the_section(tmp_path):
    assert demo.readme_reference(tmp_path / "none.md") is None
    (tmp_path / "R.md").write_text("# x\n\n## Other\n\n| model | mAP |\n|---|---|\n| a | 1.0 ± 0.1 |\n")
    assert demo.readme_reference(tmp_path / "R.md") is None


def test_example_images_follow_a_stated_rule():
    labels = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 1, 1], [0, 1, 0], [0, 0, 1]])
    a = np.array([[0.9, 0.1, 0.1], [0.9, 0.1, 0.1], [0.1, 0.9, 0.1], [0.9, 0.1, 0.1], [0.9, 0.1, 0.1],
                  [0.1, 0.1, 0.9]])
    b = a.copy()
    b[4] = [0.1, 0.9, 0.1]  # the students rank a different label first on images 2 and 4
    b[2] = [0.9, 0.1, 0.1]
    picked = demo.example_images(labels, a, b)
    assert [i for i, _ in picked] == [1, 0, 3, 2]
    assert picked[0][1] == "the first test image with 1 class of ground truth"
    assert picked[2][1] == "the first test image with 3 classes of ground truth"
    assert "rank a different label first" in picked[3][1]


def test_train_tool_help_says_no_arguments_runs_the_demo():
    r = subprocess.run([sys.executable, str(REPO / "tools" / "train.py"), "--help"], capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 0 and "--stage" in r.stdout and not r.stderr
    # the note comes after the options, where a reader of the help ends
    assert r.stdout.index("With no arguments, tools/train.py runs the embedded demo") > r.stdout.rindex("--debug")


def test_the_demo_trains_what_the_study_trains_at_the_rates_it_chose(tmp_path):
    """The README's demo table comes from the study's jobs: with the choices the study made on
    validation (the demo preset's rates and the released soft-scale lr_mult), each demo job
    has the settings of the study's job of the same model, its number of threads included (on
    some CPUs that number changes a stage's bits)."""
    from mlic.study.pipeline import RELEASED_SOFT_SCALE, SeedData, SeedPlan

    p = get_preset("demo")
    data = SeedData(root=str(tmp_path), fit=str(tmp_path / "fit"), val=str(tmp_path / "val"),
                    test=str(tmp_path / "test"), gt_test=str(tmp_path / "gt"), classes=str(tmp_path / "classes"),
                    pretrain=str(tmp_path / "pre"), pretrain_root=str(tmp_path))
    tuned = {"teacher_lr": p.base_lr["wsddn"], "lr": p.base_lr["student"], "soft_scale": 10.0}
    assert p.base_lr["stage2"] == p.base_lr["student"]
    study_plan = SeedPlan(p, 0, tmp_path / "seed0", data)
    demo_jobs = {j.key.split("/", 1)[1]: j for j in seed_jobs(p, 0, tmp_path / "seed0", data)}
    study_arms = [RELEASED_SOFT_SCALE, PAPER_L2]
    study_jobs = {j.key.split("/", 1)[1]: j for j in study_plan.shared_jobs(study_arms, tuned)
                  + study_plan.student_jobs(study_arms, tuned=tuned)}
    pairs = {"pretrain": "pretrain", "teacher": "teacher", RELEASED.stage1_key: RELEASED.stage1_key,
             RELEASED.key: RELEASED_SOFT_SCALE.key, PAPER_L2.key: PAPER_L2.key, BASELINE: BASELINE}
    assert set(pairs) <= set(demo_jobs)

    def settings(job):
        cfg = json.loads(json.dumps(job.config))
        cfg.pop("out", None)
        return cfg

    for d, s in pairs.items():
        a, b = settings(demo_jobs[d]), settings(study_jobs[s])
        # paths name the job's own folder and its inputs' folders, which follow the keys
        text_a, text_b = json.dumps(a, sort_keys=True), json.dumps(b, sort_keys=True)
        assert text_a.replace(RELEASED.key + "/", RELEASED_SOFT_SCALE.key + "/") == text_b, d
        assert demo_jobs[d].threads == study_jobs[s].threads, d
