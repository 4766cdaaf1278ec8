"""bench/record.py: the one writer of the benchmarks' JSON results."""
import importlib.util
import json
import os
import subprocess
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def _record():
    spec = importlib.util.spec_from_file_location("bench_record", REPO / "bench" / "record.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_write_puts_command_commit_and_machine_above_the_result(tmp_path, capsys):
    path = _record().write({"rows": [1, 2]}, tmp_path / "new" / "r.json", argv=["--quick"])
    assert path.is_file() and f"written {path}" in capsys.readouterr().out
    data = json.loads(path.read_text())
    assert list(data)[:4] == ["command", "date", "commit", "machine"] and data["rows"] == [1, 2]
    assert data["command"].endswith(" --quick")
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert data["commit"] == (head or "unknown")
    m = data["machine"]
    assert m["torch"] == torch.__version__ and m["cores"] == os.cpu_count()
    assert m["gpu"] == (torch.cuda.get_device_name() if torch.cuda.is_available() else None)


def test_cpu_model_is_the_one_in_proc_cpuinfo():
    info = Path("/proc/cpuinfo")
    if not info.exists():
        return
    names = [l.split(":", 1)[1].strip() for l in info.read_text().splitlines() if l.startswith("model name")]
    if names:
        assert _record().cpu_model().startswith(names[0] + " (")


def test_every_benchmark_writes_its_result_through_record():
    scripts = [p for p in (REPO / "bench").glob("*.py") if '"--out"' in p.read_text()]
    assert len(scripts) >= 7
    assert [p.name for p in scripts if "record.write(" not in p.read_text() or "json.dump" in p.read_text()] == []
