"""Progress: a bar on a terminal; a few plain lines when the output is a file."""
import io
import logging
import re
import sys

from mlic.engine.progress import Progress


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_redirected_output_gets_a_few_plain_lines():
    out = io.StringIO()
    p = Progress(1000, desc="train", unit="iterations", stream=out, lines=20)
    for i in range(1000):
        p.update(1, {"loss": f"{1 / (i + 1):.4g}"})
    p.close()
    lines = out.getvalue().splitlines()
    assert 20 <= len(lines) <= 21 and "\r" not in out.getvalue()
    assert lines[0].startswith("train: 50/1000 iterations (5%), loss 0.02; ")
    assert re.search(r"about \S+ left$", lines[0])
    assert lines[-1].startswith("train: 1000/1000 iterations (100%)") and "left" not in lines[-1]
    assert max(map(len, lines)) < 200


def test_a_slow_loop_reports_at_least_every_interval(monkeypatch):
    import mlic.engine.progress as P

    clock = iter(range(0, 10000, 100))  # 100 s per item
    monkeypatch.setattr(P.time, "monotonic", lambda: next(clock))
    out = io.StringIO()
    p = Progress(1000, stream=out, interval=60.0)
    for _ in range(3):
        p.update(1)
    assert len(out.getvalue().splitlines()) == 3


def test_rate_counts_the_items_of_this_run(monkeypatch):
    import mlic.engine.progress as P

    clock = iter([0.0, 4.0, 4.0])
    monkeypatch.setattr(P.time, "monotonic", lambda: next(clock))
    p = Progress(10, initial=2, stream=io.StringIO(), enabled=False)  # 2 done before this run
    p.update(6)
    assert p.count == 8 and p.rate() == 1.5


def test_a_terminal_gets_a_bar():
    term = FakeTerminal()
    p = Progress(10, desc="test", stream=term)
    for _ in range(10):
        p.update(1)
    p.close()
    text = term.getvalue()
    assert "\r" in text and "10/10" in text


def test_log_lines_go_above_the_bar_not_onto_it(monkeypatch):
    """With a bar on the terminal, a log record (e.g. the eval line) is written on a line of
    its own: the bar is cleared first and redrawn after it."""
    from mlic.cli.common import setup_console_logging

    term = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", term)
    setup_console_logging()
    p = Progress(10, desc="train", stream=term)
    p.update(3)
    logging.getLogger("mlic.train").info("eval @ iter 3: mAP=0.5")
    p.update(1)
    p.close()
    text = term.getvalue()
    before, _, after = text.partition("eval @ iter 3: mAP=0.5")
    assert after.startswith("\n")
    cleared, _, line_start = before.rpartition("\r")
    assert cleared.rstrip(" ").endswith("\r") and line_start.endswith("mlic.train: ")  # the bar's line cleared
    assert "|" not in line_start and "4/10" in after  # the record alone on its line, the bar drawn again below
