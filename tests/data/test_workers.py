"""OrderedProcessMap: the jobs' order, errors and dead workers reported, and a stop that
cannot hang (each case that could hang runs in its own process, under a time limit)."""
import multiprocessing as mp
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mlic.data.workers import CLEAN_START_METHOD, OrderedProcessMap
from tests.process_group import ctrl_c, process_group

REPO = Path(__file__).resolve().parents[2]
CTX = mp.get_context(CLEAN_START_METHOD)


def _square_slowly(k):
    time.sleep(0.02 * (k % 3))  # later jobs often finish first
    return k * k


def _fail_on_five(k):
    if k == 5:
        raise ValueError("job five is bad")
    return k


def _die_on_three(k):
    if k == 3:
        os._exit(9)
    return k


def _slow_first(k):
    if k == 0:
        time.sleep(1.0)
    return k


_STATE = {}


def _init(tag):
    _STATE["tag"] = tag


def _tagged(k):
    return _STATE["tag"], k


def test_results_come_in_the_jobs_order():
    with OrderedProcessMap(_square_slowly, 2, CTX) as pool:
        assert list(pool.imap(range(40))) == [k * k for k in range(40)]
    with OrderedProcessMap(_tagged, 3, CTX, initializer=_init, initargs=("x",), in_flight=4) as pool:
        assert list(pool.imap(iter(range(10)))) == [("x", k) for k in range(10)]
        assert list(pool.imap([])) == []


def test_a_jobs_exception_is_raised_in_the_parent_in_order():
    got = []
    with OrderedProcessMap(_fail_on_five, 2, CTX) as pool:
        with pytest.raises(ValueError, match="job five is bad"):
            for v in pool.imap(range(10)):
                got.append(v)
    assert got == [0, 1, 2, 3, 4]


def test_lookahead_bounds_the_jobs_sent_past_a_slow_one():
    pulled = []

    def jobs():
        for k in range(30):
            pulled.append(k)
            yield k

    with OrderedProcessMap(_slow_first, 2, CTX, in_flight=1, lookahead=4) as pool:
        it = pool.imap(jobs())
        assert next(it) == 0
        assert len(pulled) <= 4  # without the bound the fast worker would have taken all 29
        assert list(it) == list(range(1, 30))


def _run(code, timeout=60):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, PYTHONPATH=str(REPO)), start_new_session=True)


def test_a_dead_worker_is_an_error_not_a_hang():
    r = _run("""
        import multiprocessing as mp
        from mlic.data.workers import OrderedProcessMap, WorkerDied
        from tests.data.test_workers import CTX, _die_on_three
        with OrderedProcessMap(_die_on_three, 2, CTX) as pool:
            try:
                list(pool.imap(range(8)))
            except WorkerDied as e:
                print("DIED", e)
        print("CLOSED", mp.active_children())
    """)
    assert r.returncode == 0, r.stderr
    assert "DIED worker process" in r.stdout and "(exit code 9) while on job 3" in r.stdout
    assert "CLOSED []" in r.stdout


def test_ctrl_c_while_a_worker_is_blocked_stops_everything(tmp_path):
    # the job reads a FIFO that nobody writes: its worker blocks as on a stalled file system
    fifo = tmp_path / "stalled"
    os.mkfifo(fifo)
    with process_group([sys.executable, "-c", textwrap.dedent(f"""
        import multiprocessing as mp, sys
        from mlic.data.workers import OrderedProcessMap
        from tests.data.test_workers import CTX, _read_or_echo
        jobs = [0, 1, 2, {str(fifo)!r}, 4, 5, 6, 7]
        try:
            with OrderedProcessMap(_read_or_echo, 2, CTX) as pool:
                for v in pool.imap(jobs):
                    print("GOT", v, flush=True)
        except KeyboardInterrupt:
            print("INTERRUPTED", mp.active_children(), flush=True)
            sys.exit(130)
    """)], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO))) as proc:
        lines = [proc.stdout.readline() for _ in range(3)]
        assert lines == ["GOT 0\n", "GOT 1\n", "GOT 2\n"], proc.stderr.read() if not lines[-1] else lines
        time.sleep(0.3)
        out, err = ctrl_c(proc, timeout=30)
    assert proc.returncode == 130, err
    assert "INTERRUPTED []" in out and "Traceback" not in err


def _read_or_echo(job):
    if isinstance(job, str):
        with open(job, "rb") as f:
            return f.read()
    return job


def test_bad_arguments():
    with pytest.raises(ValueError, match="workers must be at least 1"):
        OrderedProcessMap(_tagged, 0, CTX)
