"""An ordered map over worker processes that cannot hang when it is stopped.

``multiprocessing.Pool`` shares one lock between its idle workers and ``terminate()``, and
waits for a dead worker's task forever; a Ctrl-C or a worker killed by the system can
therefore leave the parent waiting. Here each worker has its own pipe: nothing is shared,
a worker that dies is noticed at once (its pipe closes), and stopping kills the workers
without waiting on them.
"""
from __future__ import annotations

import multiprocessing
import signal
from collections import deque
from multiprocessing.connection import wait
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Sequence, Tuple


# Workers start from a clean process, never a plain fork: a forked copy of a parent whose
# OpenCV, OpenMP or torch thread pools already ran can deadlock the first time it uses them.
CLEAN_START_METHOD = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def clean_context(preload: Sequence[str] = ()):
    """The multiprocessing context of :data:`CLEAN_START_METHOD`; a fork server imports
    ``preload`` once for all its workers."""
    ctx = multiprocessing.get_context(CLEAN_START_METHOD)
    if CLEAN_START_METHOD == "forkserver":
        ctx.set_forkserver_preload(list(preload))
    return ctx


class WorkerDied(RuntimeError):
    """A worker process ended (killed, or crashed in native code) before answering."""


def _serve(conn, fn: Callable, initializer: Optional[Callable], initargs: Tuple) -> None:
    # Ctrl-C reaches the whole process group: the parent stops the workers, they stay quiet
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if initializer is not None:
        initializer(*initargs)
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        k, job = msg
        try:
            reply = (k, True, fn(job))
        except Exception as exc:  # travels back and is raised in the parent
            reply = (k, False, exc)
        try:
            conn.send(reply)
        except Exception as exc:  # an unpicklable result or exception: say what it was
            conn.send((k, False, RuntimeError(f"{type(exc).__name__}: {exc} (while returning {reply[2]!r})")))


class OrderedProcessMap:
    """``imap(jobs)`` yields ``fn(job)`` in the jobs' order, computed by ``workers`` processes.

    At most ``in_flight`` jobs wait at each worker, and no job more than ``lookahead`` ahead
    of the oldest unfinished one is sent, so one slow job does not pile up results.
    ``close()`` (also on leaving a ``with`` block) stops the workers: politely after a
    complete run, by killing them otherwise.
    """

    def __init__(self, fn: Callable, workers: int, ctx, initializer: Optional[Callable] = None,
                 initargs: Tuple = (), in_flight: int = 2, lookahead: Optional[int] = None):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.in_flight = max(1, int(in_flight))
        self.lookahead = lookahead or 8 * workers * self.in_flight
        self._procs, self._conns = [], []
        self._finished = False
        try:
            for _ in range(int(workers)):
                parent, child = ctx.Pipe(duplex=True)
                p = ctx.Process(target=_serve, args=(child, fn, initializer, initargs), daemon=True)
                p.start()
                child.close()  # only the worker holds its end: its death closes the pipe
                self._procs.append(p)
                self._conns.append(parent)
        except BaseException:
            self.close()
            raise

    def imap(self, jobs: Iterable[Any]) -> Iterator[Any]:
        jobs = iter(jobs)
        self._finished = False
        pending: Dict[int, deque] = {i: deque() for i in range(len(self._conns))}  # job numbers at each worker
        results: Dict[int, Any] = {}
        sent = yielded = 0
        exhausted = False
        while True:
            while not exhausted and sent - yielded < self.lookahead:
                free = min(pending, key=lambda i: len(pending[i]))
                if len(pending[free]) >= self.in_flight:
                    break
                try:
                    job = next(jobs)
                except StopIteration:
                    exhausted = True
                    break
                pending[free].append(sent)
                try:
                    self._conns[free].send((sent, job))
                except OSError:
                    raise self._died(free, pending[free][0]) from None
                sent += 1
            if yielded in results:
                ok, value = results.pop(yielded)
                yielded += 1
                if not ok:
                    raise value
                yield value
                continue
            if exhausted and yielded == sent:
                self._finished = True
                return
            busy = [self._conns[i] for i in pending if pending[i]]
            for conn in wait(busy):
                i = self._conns.index(conn)
                try:
                    k, ok, value = conn.recv()
                except (EOFError, OSError):  # its end closed, or reset with our jobs unread
                    raise self._died(i, pending[i][0]) from None
                pending[i].remove(k)
                results[k] = (ok, value)

    def _died(self, i: int, job: int) -> WorkerDied:
        p = self._procs[i]
        p.join(1)
        return WorkerDied(f"worker process {p.pid} ended (exit code {p.exitcode}) while on job {job}")

    def close(self) -> None:
        if self._finished:
            for conn in self._conns:
                try:
                    conn.send(None)
                except OSError:
                    pass
            for p in self._procs:
                p.join(5)
        for p in self._procs:
            if p.is_alive():
                p.kill()
            p.join()
        for conn in self._conns:
            conn.close()
        self._procs, self._conns = [], []

    def __enter__(self) -> "OrderedProcessMap":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
