"""What the command-line tools share: console logging, and bad input as one sentence with
exit status 2 (the traceback only with --debug)."""
from __future__ import annotations

import logging
import sys
import traceback
from typing import Callable

from mlic.caffe.errors import CaffeError
from mlic.data.datalist import DatalistError, DatasetFormatError
from mlic.engine import distributed as D
from mlic.errors import RunInterrupted, RunStopped, UserInputError

# The errors whose message is a sentence about the user's input (a flag or a file).
USER_ERRORS = (UserInputError, CaffeError, DatalistError, DatasetFormatError)
EXIT_USER_ERROR = 2
EXIT_RUN_STOPPED = 1


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of each record, above a progress bar
    rather than onto its line."""

    _mlic_console = True

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass

    def emit(self, record):
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


def setup_console_logging() -> None:
    """INFO lines of the mlic loggers on stderr (once per process)."""
    logger = logging.getLogger("mlic")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.INFO)


def run_tool(prog: str, fn: Callable[[], object], debug: bool = False) -> int:
    """Runs `fn` as a tool's body: 0 when it returns, 2 with one sentence on stderr when it
    raises a user error, 1 when the run stopped for a stated reason (divergence, a full
    disk), 128 + the signal's number when a signal ended it (RunInterrupted: 130 for
    Ctrl-C, 143 for SIGTERM); the traceback comes first only with `debug`."""
    setup_console_logging()
    try:
        fn()
        return 0
    except RunInterrupted as exc:
        if debug:
            traceback.print_exc()
        print(f"{prog}: {exc}", file=sys.stderr)
        return exc.exit_status
    except (USER_ERRORS + (RunStopped,)) as exc:
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_RUN_STOPPED if isinstance(exc, RunStopped) and not isinstance(exc, USER_ERRORS) \
            else EXIT_USER_ERROR
    finally:
        D.cleanup()
