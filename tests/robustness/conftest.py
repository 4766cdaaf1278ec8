"""What the table-driven robustness suites share: the tools' main() functions, called in
this process, each case with a console log of its own."""
import importlib.util
import logging
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def tool_main(name):
    """The main() behind tools/<name>.py."""
    if name == "train":
        from mlic.cli.train import main
        return main
    if name == "test":
        from mlic.cli.test import main
        return main
    spec = importlib.util.spec_from_file_location(f"tool_{name}", REPO / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


@pytest.fixture(autouse=True)
def fresh_console_log():
    """The tools log to the stderr of the moment they first ran; each case has its own."""
    logger = logging.getLogger("mlic")
    for h in [h for h in logger.handlers if getattr(h, "_mlic_console", False)]:
        logger.removeHandler(h)
    yield
