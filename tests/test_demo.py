"""The demo end to end on the smoke preset."""
import json
import os
import subprocess
import sys
from pathlib import Path

from mlic.demo import ARMS, ROWS, main
from mlic.study.pipeline import BASELINE

REPO = Path(__file__).resolve().parents[1]


def test_demo_smoke_end_to_end_small_redirected_log_and_clean_rerun(tmp_path):
    log = tmp_path / "demo.log"
    with open(log, "w") as f:  # the console sent to a file, as a user's `make demo > log`
        r = subprocess.run([sys.executable, str(REPO / "tools" / "demo.py"), "--preset", "smoke", "--out",
                            str(tmp_path)], stdout=f, stderr=subprocess.STDOUT, timeout=1800,
                           env=dict(os.environ, PYTHONPATH=str(REPO)))
    text = log.read_text()
    assert r.returncode == 0, text[-3000:]
    assert "\r" not in text and max(map(len, text.splitlines())) < 1000 and len(text.encode()) < 100_000
    run = tmp_path / "smoke" / "seed0"
    res = json.loads((run / "results.json").read_text())["results"]
    assert set(res) == {key for key, _ in ROWS} and len(ARMS) == 2
    assert "CorLoc" in res["teacher"] and "CorLoc" not in res[BASELINE]
    table = (run / "results.md").read_text()
    for _, name in ROWS:
        assert name in table
    figs = {p.name for p in (run / "figures").iterdir()}
    assert {"qualitative_0.png", "training_teacher.png", "training_pretrain.png", f"pr_{BASELINE}.png"} <= figs
    # a rerun replaces the seed's folder: a stale file goes, the generated data stay
    (run / "stale.txt").write_text("old")
    data_marker = (run / "data" / "complete.json").stat().st_mtime_ns
    assert main(["--preset", "smoke", "--out", str(tmp_path)]) == 0
    assert not (run / "stale.txt").exists()
    assert (run / "data" / "complete.json").stat().st_mtime_ns == data_marker
    # every stage ran in its own process, in both runs: same seed, same numbers
    assert json.loads((run / "results.json").read_text())["results"] == res


def test_demo_bad_arguments(capsys):
    assert main(["--seeds", "a"]) == 2
    assert "--seeds" in capsys.readouterr().err
    assert main(["--workers", "0"]) == 2
