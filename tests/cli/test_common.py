"""The tools' shared main(): bad input is one sentence and exit status 2; library code
raises instead of exiting and leaves the logging configuration to the application."""
import ast
import logging
from pathlib import Path

import pytest

from mlic.errors import UserInputError
from mlic.cli.common import run_tool

PACKAGE = Path(__file__).resolve().parents[2] / "mlic"


def test_user_error_is_one_sentence_and_exit_2(capsys):
    def body():
        raise UserInputError("--datalist: train.txt does not exist")

    assert run_tool("train.py", body) == 2
    err = capsys.readouterr().err
    assert err == "train.py: error: --datalist: train.txt does not exist\n"


def test_other_errors_are_not_hidden():
    def body():
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        run_tool("train.py", body)


def test_library_code_never_exits_nor_configures_logging():
    """No `raise SystemExit`, sys.exit() or logging.basicConfig() under mlic/ (only the
    tools' main() decide the exit status and the console format)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Raise) and node.exc is not None:
                exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                if isinstance(exc, ast.Name) and exc.id == "SystemExit":
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} raise SystemExit")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr in ("basicConfig", "exit") and isinstance(node.func.value, ast.Name) and \
                    node.func.value.id in ("logging", "sys"):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.func.value.id}."
                             f"{node.func.attr}()")
    assert not found, found


def test_train_log_does_not_change_the_callers_logging(tmp_path):
    """train()'s train.log handler is removed afterwards and the mlic logger's level restored."""
    from mlic.training.train import _train_log

    logger = logging.getLogger("mlic")
    before = (logger.level, list(logger.handlers))
    with _train_log(tmp_path):
        logging.getLogger("mlic.train").info("inside")
    assert (logger.level, list(logger.handlers)) == before
    assert "inside" in (tmp_path / "train.log").read_text()


@pytest.mark.parametrize("tool", ["train", "test"])
def test_every_flag_has_help_and_fixed_choices(tool):
    import argparse
    import importlib

    mod = importlib.import_module(f"mlic.cli.{tool}")
    add = mod.add_train_arguments if tool == "train" else mod.add_test_arguments
    parser = add(argparse.ArgumentParser())
    actions = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert actions
    assert not [a.option_strings[0] for a in actions if not a.help], "flags without help text"
    choices = {a.option_strings[0]: a.choices for a in actions if a.choices}
    if tool == "train":
        assert set(choices) >= {"--stage", "--lr-policy", "--kd-loss", "--stage1-train", "--teacher-mode", "--regions"}
