"""The project's one user-error type.

Library code raises; the tools' ``main()`` turns a :class:`UserInputError` (and the
other ValueErrors that name a user's file: datalists, prototxts, caffemodels) into one
sentence on stderr and exit status 2.
"""


class UserInputError(ValueError):
    """Bad input from the user (a flag, a config field, a file): the message is one
    sentence naming the argument or file and what is wrong with it."""


class OutputError(UserInputError):
    """An output the user named cannot be written (a missing folder, a read-only or full
    file system, the input file itself): the message names the path and the cause."""


class RunStopped(RuntimeError):
    """A run stopped for a reason its message states in one sentence (training diverged,
    a checkpoint could not be written); the tools exit with status 1 without a traceback."""


class RunInterrupted(Exception):
    """A run ended by a signal (Ctrl-C, a scheduler's SIGTERM); the message says where it
    stopped and how to continue. The tools exit with 128 + the signal's number, as a
    shell reports a process the signal ended."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = int(signum)

    @property
    def exit_status(self) -> int:
        return 128 + self.signum
