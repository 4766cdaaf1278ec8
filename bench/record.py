"""Where a benchmark ran and how its JSON result is written: one helper for every script in bench/.

Each result file opens with the command, the date, the commit and the machine (CPU model and
vector extension, cores, GPU, Python, torch and CUDA, numpy and OpenCV when the benchmark used
them), then the benchmark's own keys."""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def cpu_model() -> str:
    """The CPU's model name and its widest vector extension (from /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    lines = text.splitlines()
    model = next((l.split(":", 1)[1].strip() for l in lines if l.startswith("model name")), "?")
    flags = next((l.split(":", 1)[1].split() for l in lines if l.startswith("flags")), [])
    isa = next((f for f in ("avx512f", "avx2", "sse4_2") if f in flags), "?")
    return f"{model} ({isa})"


def commit(path: Path = REPO) -> str:
    r = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() or "unknown"


def machine() -> dict:
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    out = {"cpu": cpu_model(), "cores": os.cpu_count(),
           "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
           "threads": torch.get_num_threads(), "gpu": gpu, "platform": platform.platform(),
           "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    # versions of the libraries this benchmark actually ran, not of everything installed
    for name in ("numpy", "cv2"):
        if name in sys.modules:
            out["opencv" if name == "cv2" else name] = sys.modules[name].__version__
    return out


def kind() -> str:
    """'gpu' or 'cpu': the default result file's suffix."""
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def write(result: dict, path, argv: Optional[Sequence[str]] = None) -> Path:
    """Write `result` under the command, date, commit and machine to `path` (folders made); say where."""
    args = list(sys.argv[1:] if argv is None else argv)
    record = {"command": " ".join([os.path.relpath(sys.argv[0], REPO)] + args),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "commit": commit(), "machine": machine(), **result}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"written {path}")
    return path


def timed(cmd: Sequence[str], cwd, log_path, env: Optional[dict] = None) -> dict:
    """Runs `cmd` with its output to `log_path`: wall time and the CPU time (user, system)
    of the command and every process it waited for (wait4's usage), and its exit code."""
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(list(cmd), cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    return {"wall_s": time.perf_counter() - t0, "user_s": usage.ru_utime, "sys_s": usage.ru_stime,
            "cpu_s": usage.ru_utime + usage.ru_stime, "exit": os.waitstatus_to_exitcode(status)}
