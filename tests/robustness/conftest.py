"""What the table-driven robustness suites share: the tools' main() functions, called in
this process, each case with a console log of its own."""
import importlib.util
import logging
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# a training run of a few iterations on a tiny net
NET = ["--input-size", "64", "--student-size", "32", "--pooled-size", "1", "--width", "0.0625", "--fc-dim", "16"]


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


# the tiny synthetic set those runs train on, once per test module
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from mlic.data.synthetic import SyntheticConfig, generate_dataset

    out = tmp_path_factory.mktemp("synthetic")
    return generate_dataset(str(out), SyntheticConfig(num_train=12, num_test=6, bbox_num=6, image_size=64,
                                                      num_classes=4, seed=3))
