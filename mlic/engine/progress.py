"""Progress of a long loop: a tqdm bar on a terminal; otherwise (output redirected to a
file or a pipe) a plain line now and then, so that a log stays small and readable."""
from __future__ import annotations

import os
import sys
import time
from typing import Callable, Dict, Optional


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    """update(n, postfix) as the loop advances, close() at the end; rate() the items per second.

    On a terminal (`stream.isatty()`): a tqdm bar. Otherwise: one line through `emit` (by
    default printed to the stream) at most every `every` items or `interval` seconds,
    whichever comes first after at least one item, and at the end: about `lines` lines
    per loop. MLIC_NO_PROGRESS=1 turns both off."""

    def __init__(self, total: int, initial: int = 0, desc: str = "", unit: str = "it", stream=None,
                 emit: Optional[Callable[[str], None]] = None, lines: int = 20, interval: float = 60.0,
                 enabled: bool = True):
        self.total, self.count, self.desc, self.unit = total, initial, desc, unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and os.environ.get("MLIC_NO_PROGRESS") != "1"
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(self.enabled and isatty is not None and isatty())
        self._emit = emit or (lambda line: print(line, file=self.stream, flush=True))
        self.every = max(1, total // max(1, lines))
        self.interval = interval
        self._start = self._last_time = time.monotonic()
        self._start_count = self._last_count = initial
        self._bar = None
        if self.tty:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc or None, unit=unit, file=self.stream,
                             dynamic_ncols=True, leave=True)

    def update(self, n: int = 1, postfix: Optional[Dict[str, str]] = None) -> None:
        self.count += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)
            return
        now = time.monotonic()
        due = (self.count - self._last_count >= self.every or now - self._last_time >= self.interval
               or self.count >= self.total)
        if due and self.count > self._last_count:
            self._emit(self.line(now, postfix))
            self._last_time, self._last_count = now, self.count

    def line(self, now: float, postfix: Optional[Dict[str, str]] = None) -> str:
        done = self.count - self._start_count
        elapsed = now - self._start
        pct = f" ({100 * self.count / self.total:.0f}%)" if self.total else ""
        eta = ""
        if done > 0 and self.count < self.total:
            eta = f", about {_hms(elapsed / done * (self.total - self.count))} left"
        extra = "".join(f", {k} {v}" for k, v in (postfix or {}).items())
        head = f"{self.desc}: " if self.desc else ""
        return f"{head}{self.count}/{self.total} {self.unit}{pct}{extra}; {_hms(elapsed)} elapsed{eta}"

    def rate(self) -> float:
        """Items per second since the start, the initial ones not counted."""
        elapsed = time.monotonic() - self._start
        return (self.count - self._start_count) / elapsed if elapsed > 0 else 0.0

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
