"""A tool run in its own process group, stopped as Ctrl-C on a terminal stops it."""
import os
import signal
import subprocess
from contextlib import contextmanager


@contextmanager
def process_group(args, **kw):
    """``subprocess.Popen(args)`` in a new session with text pipes; on leaving, a process
    still running is killed with its whole group (workers included), so a hang fails the
    test instead of outliving it."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kw)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def ctrl_c(proc, timeout: float):
    """SIGINT to the whole process group (what a terminal's Ctrl-C does) -> (stdout, stderr)."""
    os.killpg(proc.pid, signal.SIGINT)
    return proc.communicate(timeout=timeout)
