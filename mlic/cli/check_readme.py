"""Run the README's commands as written.

Every fenced ```bash block of README.md is a sequence of commands a user runs from the
repository root. tests/test_readme.py (part of `make test`) runs each one in a fresh
`bash -euo pipefail`, in README order, in one temporary folder laid out as a clone (the
repository's files, `.venv/bin/python` and `.venv/bin/torchrun`), with small stand-ins for
the user's files in the shell variables the blocks take their places and sizes from
(`: "${ITERS:=20000}"` in a block; the test sets ITERS=2); ```python blocks run too, at
small sizes. A ```text block right after a ```python block (at most a line of prose between
them) is what that block prints, and the test compares it with what it printed. A block
too long for CI (the demo, the test suite) follows the line

    <!-- long: run by tools/check_readme.py --all -->

(an HTML comment: the rendered README does not show it) and is run by this script, as
written, in this checkout, which should be a fresh clone (`make readme-check` builds it and
runs everything):

    tools/check_readme.py            # the blocks CI runs (tests/test_readme.py)
    tools/check_readme.py --long     # the long blocks only
    tools/check_readme.py --all      # both
    tools/check_readme.py --list     # every block: its line, kind and first command
"""
import argparse
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
LONG_MARK = "<!-- long: run by tools/check_readme.py --all -->"
_FENCE = re.compile(r"^(\s*)```\s*([\w+-]*)\s*$")


@dataclass
class Block:
    lang: str  # "bash", "python", ... (the fence's info string)
    text: str  # the block's lines, without the fence's indentation
    line: int  # 1-based line of the opening fence in README.md
    section: str  # the heading above it
    long: bool = False  # LONG_MARK stands on the line before the fence
    end: int = 0  # 1-based line of the closing fence
    output: Optional[str] = None  # a python block's printed output, as the README shows it

    @property
    def kind(self) -> str:
        """'long' (run by this script only), 'bash', 'python', or another language (not run)."""
        return "long" if self.long else self.lang

    @property
    def first_command(self) -> str:
        for ln in self.text.splitlines():
            if ln.strip() and not ln.lstrip().startswith(("#", ":")):
                return ln.strip()
        return ""


def readme_blocks(path=README) -> List[Block]:
    """The fenced code blocks of a Markdown file, also those indented inside list items."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    blocks, section, k = [], "", 0
    while k < len(lines):
        m = _FENCE.match(lines[k])
        if not m:
            if lines[k].startswith("#"):
                section = lines[k].lstrip("#").strip()
            elif lines[k].strip() == LONG_MARK:
                nxt = _FENCE.match(lines[k + 1]) if k + 1 < len(lines) else None
                if not nxt or nxt.group(2) != "bash":
                    raise ValueError(f"{path}:{k + 1}: the long-block mark must stand right before a ```bash fence")
            k += 1
            continue
        indent, lang, start = m.group(1), m.group(2), k
        long = k > 0 and lines[k - 1].strip() == LONG_MARK
        body = []
        k += 1
        while k < len(lines) and not (_FENCE.match(lines[k]) and lines[k].strip() == "```"):
            ln = lines[k]
            if ln.strip() and not ln.startswith(indent):
                raise ValueError(f"{path}:{k + 1}: a line of the block opened at line {start + 1} is indented less "
                                 "than its fence")
            body.append(ln[len(indent):])
            k += 1
        if k == len(lines):
            raise ValueError(f"{path}:{start + 1}: the block opened here is never closed")
        blocks.append(Block(lang, "\n".join(body) + "\n", start + 1, section, long, end=k + 1))
        k += 1
    return _attach_outputs(blocks, lines)


def _attach_outputs(blocks: List[Block], lines: List[str]) -> List[Block]:
    """A ```text block that follows a ```python block with at most one line of prose (no
    heading) between them becomes that block's `output` instead of a block of its own."""
    out: List[Block] = []
    for b in blocks:
        prev = out[-1] if out else None
        gap = [ln for ln in lines[prev.end:b.line - 1] if ln.strip()] if prev else []
        if (b.lang == "text" and prev is not None and prev.lang == "python" and prev.output is None and
                len(gap) <= 1 and not any(ln.startswith("#") for ln in gap)):
            prev.output = b.text
            continue
        out.append(b)
    return out


def run_long(blocks: List[Block]) -> int:
    """The long blocks, as written, in this checkout; the number that failed."""
    failed = 0
    for b in blocks:
        print(f"== README.md:{b.line} ({b.section}): {b.first_command}", flush=True)
        t0 = time.monotonic()
        r = subprocess.run(["bash", "-euo", "pipefail", "-c", b.text], cwd=REPO)
        took = time.monotonic() - t0
        print(f"== README.md:{b.line}: {'ok' if r.returncode == 0 else f'FAILED (exit {r.returncode})'} "
              f"after {took / 60:.1f} min", flush=True)
        failed += r.returncode != 0
    return failed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = ap.add_mutually_exclusive_group()
    what.add_argument("--long", action="store_true", help="run only the long blocks, in this checkout")
    what.add_argument("--all", action="store_true", help="run the blocks CI runs, then the long ones")
    what.add_argument("--list", action="store_true", help="list the blocks")
    args = ap.parse_args(argv)
    try:
        blocks = readme_blocks()
    except ValueError as exc:
        print(f"check_readme.py: error: {exc}", file=sys.stderr)
        return 2
    if args.list:
        for b in blocks:
            print(f"README.md:{b.line:<5} {b.kind:<7} {b.section}: {b.first_command}")
        return 0
    status = 0
    if not args.long:
        status = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                 "tests/test_readme.py"], cwd=REPO).returncode
    if args.long or args.all:
        status = max(status, 1 if run_long([b for b in blocks if b.kind == "long"]) else 0)
    return status

