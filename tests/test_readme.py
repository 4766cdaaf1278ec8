"""Every command of README.md, run as written (tools/check_readme.py: how blocks are found
and marked, and who runs the long ones).

The ```bash blocks run in README order, each in a fresh `bash -euo pipefail`, in one
temporary folder laid out as a clean clone: the repository's files (linked), `.venv/bin/
python` and `.venv/bin/torchrun` (this interpreter), and small stand-ins for the user's
files, given to the blocks through the variables they take their places and sizes from:
COCO (a COCO 2014-style folder, tests/coco_style.py), PROTOTXT (the released prototxts at
the stand-in sizes), TORCH_HOME (a torchvision VGG16 file), SIZE, BOXES, NET, ITERS,
TEACHER_ITERS, GPUS; the VGG16 caffemodel lies under its released name. The ```python
blocks run in folders of their own with a small datalist pair (train.txt, test.txt) and the
caffemodel, and TrainConfig shrinks the net and the iterations they ask for; a python
block followed by a ```text block must print exactly what that block shows. Long blocks
(after the comment `<!-- long: ... -->`) are only checked here: their syntax, and that their
make targets exist."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mlic import _ext
from mlic.cli import check_readme
from tests.coco_style import (NET_FLAGS, write_coco_style, write_released_prototxts, write_torchvision_vgg16,
                              write_vgg16_caffemodel)

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


BLOCKS = check_readme.readme_blocks(README)
SIZE, BOXES = 64, 8
SMALL = {"SIZE": str(SIZE), "BOXES": str(BOXES), "NET": " ".join(NET_FLAGS), "ITERS": "2", "TEACHER_ITERS": "2",
         "GPUS": "2"}
# not part of a clone, or written by the commands
NOT_LINKED = {".git", ".venv", "build", "runs", "demo_out"}

# A command word that needs the project's environment, written without it (not a path's
# last part, not the module of `python -m`).
_BARE = re.compile(r"(?<![\w./-])(?<!-m )(python3?|pytest|torchrun)(?=\s)")

# Runs a README ```python block (the file named by argv[1]) with the configuration it builds
# shrunk to the stand-in sizes: the net of tests/coco_style.py, two iterations of two images.
PYTHON_PRELUDE = f"""
import dataclasses
import sys

import mlic.training
from prototxt_ports import NetConfig

_TrainConfig = mlic.training.TrainConfig


def _small(*args, **kwargs):
    cfg = _TrainConfig(*args, **kwargs)
    return dataclasses.replace(cfg, net=NetConfig(input_size={SIZE}, width={NET_FLAGS[1]}, fc_dim={NET_FLAGS[3]}),
                               solver=dataclasses.replace(cfg.solver, max_iter=2),
                               data=dataclasses.replace(cfg.data, batch_size=2))


mlic.training.TrainConfig = _small
with open(sys.argv[1]) as f:
    code = compile(f.read(), "README.md", "exec")
exec(code)
"""


def _block_id(b):
    return f"L{b.line}-{b.kind}-{re.sub(r'[^a-z0-9]+', '-', b.section.lower()).strip('-')[:30]}"


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """(folder, environment): the clone-like folder the blocks run in, and their variables."""
    root = tmp_path_factory.mktemp("readme")
    ws, data = root / "clone", root / "data"
    ws.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in NOT_LINKED:
            (ws / entry.name).symlink_to(entry)
    bin_dir = ws / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name, how in (("python", ""), ("torchrun", " -m torch.distributed.run")):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec "{sys.executable}"{how} "$@"\n')
        (bin_dir / name).chmod(0o755)
    write_coco_style(data / "coco", size=112)
    write_vgg16_caffemodel(ws / "VGG_ILSVRC_16_layers.caffemodel")
    write_released_prototxts(data / "prototxt", rois=BOXES, input_size=SIZE)
    write_torchvision_vgg16(data / "torch" / "hub" / "checkpoints" / "vgg16-397923af.pth")
    env = dict(os.environ, **SMALL, COCO=str(data / "coco"), PROTOTXT=str(data / "prototxt"),
               TORCH_HOME=str(data / "torch"), MLIC_NO_PROGRESS="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    return ws, env


def test_the_readme_blocks_are_found():
    kinds = [b.kind for b in BLOCKS]
    assert kinds.count("bash") >= 4 and kinds.count("python") >= 2 and "long" in kinds, kinds
    sections = {b.section for b in BLOCKS if b.kind == "bash"}
    assert {"Training and testing on the original data", "Caffe interop", "Data"} <= sections, sections


def test_long_blocks_are_marked_outside_what_a_reader_sees(tmp_path):
    """The mark is an HTML comment before the fence: the rendered README does not show it, and
    no block holds it."""
    assert not [b.line for b in BLOCKS if "check_readme" in b.text]
    long = [b for b in BLOCKS if b.kind == "long"]
    assert long and long[0].first_command.startswith("make demo")
    sample = tmp_path / "R.md"
    sample.write_text(f"# T\n\n{check_readme.LONG_MARK}\n```bash\nmake demo\n```\n\n```bash\necho hi\n```\n")
    assert [b.kind for b in check_readme.readme_blocks(sample)] == ["long", "bash"]
    sample.write_text(f"{check_readme.LONG_MARK}\n\nsome text\n")
    with pytest.raises(ValueError, match="right before a ```bash fence"):
        check_readme.readme_blocks(sample)


def test_a_python_blocks_printed_output_is_read_from_the_text_block_after_it(tmp_path):
    sample = tmp_path / "R.md"
    sample.write_text("# T\n\n```python\nprint(1)\n```\n\nprints\n\n```text\n1\n```\n\n"
                      "```python\nx = 1\n```\n\n## Next\n\n```text\nnot an output\n```\n")
    blocks = check_readme.readme_blocks(sample)
    assert [(b.lang, b.output) for b in blocks] == [("python", "1\n"), ("python", None), ("text", None)]
    # the README's ops example shows what it prints
    ops = [b for b in BLOCKS if b.kind == "python" and "mlic.ops" in b.text]
    assert ops and ops[0].output


def _anchors(path):
    """The anchors GitHub gives the headings of a Markdown file."""
    return {re.sub(r"[^\w\- ]", "", ln.lstrip("#").strip().lower()).replace(" ", "-")
            for ln in path.read_text(encoding="utf-8").splitlines() if re.match(r"#+ ", ln)}


def test_links_of_the_readme_and_docs_lead_somewhere():
    """Reference material is one link away: every relative link of README.md and docs/*.md
    names a file that exists, and a heading of it where it gives an anchor."""
    bad = []
    for doc in [README, *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            dest = (doc.parent / file).resolve() if file else doc
            if not dest.exists() or (anchor and dest.suffix == ".md" and anchor not in _anchors(dest)):
                bad.append(f"{doc.relative_to(REPO)}: {target}")
    assert not bad, bad


def test_readme_commands_use_the_environment():
    """No command in the README (in a block or inline) calls a bare python, pytest or torchrun,
    which would be the system's, without the project."""
    bad = []
    text = README.read_text(encoding="utf-8")
    in_blocks = set()
    for b in BLOCKS:
        in_blocks.update(range(b.line, b.line + b.text.count("\n") + 2))
        if b.lang != "bash":
            continue
        for k, ln in enumerate(b.text.splitlines(), start=b.line + 1):
            code = ln.split(" #", 1)[0] if not ln.lstrip().startswith("#") else ""
            if _BARE.search(code):
                bad.append(f"README.md:{k}: {ln.strip()}")
    prose = "\n".join("" if k in in_blocks else ln for k, ln in enumerate(text.splitlines(), start=1))
    for m in re.finditer(r"`([^`]+)`", prose):  # inline code, also where it wraps a line
        if _BARE.search(m.group(1)):
            bad.append(f"README.md:{prose.count(chr(10), 0, m.start()) + 1}: `{m.group(1)}`")
    assert not bad, "use .venv/bin/python (or the make targets):\n" + "\n".join(bad)


def _make_targets():
    return set(re.findall(r"^([\w.-]+)\s*:(?!=)", (REPO / "Makefile").read_text(), re.M))


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=_block_id)
def test_readme_block(block, clone):
    ws, env = clone
    where = f"README.md:{block.line} ({block.section})"
    if block.kind == "long":
        r = subprocess.run(["bash", "-n", "-c", block.text], capture_output=True, text=True)
        assert r.returncode == 0, f"{where}: {r.stderr}"
        missing = [t for t in re.findall(r"\bmake\s+([\w-]+)", block.text) if t not in _make_targets()]
        assert not missing, f"{where}: no make target {missing}"
        return
    if block.kind == "python":
        if not _ext.extension_available():
            pytest.skip("mlic._C is not built")
        folder = ws / f"python_L{block.line}"
        _python_stand_ins(folder, ws)
        script = folder / "block.py"
        script.write_text("\n" * block.line + block.text)  # tracebacks give README.md's line numbers
        r = subprocess.run([str(ws / ".venv" / "bin" / "python"), "-c", PYTHON_PRELUDE, str(script)], cwd=folder,
                           env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"{where}: exit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
        if block.output is not None:  # what the README says the block prints
            assert r.stdout.rstrip() == block.output.rstrip(), f"{where} printed:\n{r.stdout}"
        return
    if block.kind != "bash":
        pytest.skip(f"a {block.lang or 'plain'} block is not a command")
    if not _ext.extension_available():
        pytest.skip("mlic._C is not built")
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", block.text], cwd=ws, env=env, capture_output=True,
                       text=True, timeout=1800)
    assert r.returncode == 0, f"{where}: exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"


def _python_stand_ins(folder, ws):
    """train.txt / test.txt (a few synthetic images, 8 proposals in the 64 x 64 frame) and
    the VGG16 caffemodel, in `folder`."""
    from mlic.data.synthetic import SyntheticConfig, generate_dataset

    folder.mkdir(exist_ok=True)
    generate_dataset(str(folder), SyntheticConfig(num_classes=4, image_size=SIZE, num_train=4, num_test=3,
                                                  bbox_num=BOXES, seed=3))
    link = folder / "VGG_ILSVRC_16_layers.caffemodel"
    if not link.exists():
        link.symlink_to(ws / "VGG_ILSVRC_16_layers.caffemodel")
