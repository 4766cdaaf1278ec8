"""Checkpoint files: a hash beside each one, corrupt ones detected and skipped by
--resume, partial files of a killed write removed, a full disk named in one sentence."""
import hashlib
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mlic.engine.checkpoint import (CheckpointError, CheckpointWriteError, atomic_save, checkpoint_path,
                                    hash_path, load_checkpoint, load_newest_intact, remove_stale_partials, verify)

ROOT = Path(__file__).resolve().parents[2]


def state(i):
    g = torch.Generator().manual_seed(i)
    return {"iter": i, "model": {"w": torch.randn(64, 64, generator=g)}}


def write_three(out):
    for i in (1, 2, 3):
        atomic_save(state(i), checkpoint_path(out, i))
    return [checkpoint_path(out, i) for i in (1, 2, 3)]


def test_the_hash_beside_a_checkpoint_is_sha256sum_format(tmp_path):
    p = atomic_save(state(1), tmp_path / "final.pt")
    digest, name = hash_path(p).read_text().split()
    assert name == "final.pt" and digest == hashlib.sha256(p.read_bytes()).hexdigest()
    if shutil.which("sha256sum"):
        r = subprocess.run(["sha256sum", "-c", hash_path(p).name], cwd=tmp_path, capture_output=True, text=True)
        assert r.returncode == 0 and "final.pt: OK" in r.stdout


def test_a_64_byte_flip_is_detected(tmp_path):
    p = atomic_save(state(1), tmp_path / "c.pt")
    data = bytearray(p.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 64] = bytes(b ^ 0xFF for b in data[mid:mid + 64])
    p.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"c.pt is corrupt: its SHA-256 differs"):
        load_checkpoint(p)


def test_resume_skips_a_corrupt_or_truncated_latest_checkpoint(tmp_path, caplog):
    paths = write_three(tmp_path)
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[: len(data) // 2])  # truncated newest
    bad = bytearray(paths[1].read_bytes())
    bad[100:164] = bytes(64)  # flipped second newest
    paths[1].write_bytes(bytes(bad))
    with caplog.at_level(logging.WARNING, logger="mlic"):
        path, st = load_newest_intact(tmp_path)
    assert path == paths[0] and st["iter"] == 1
    assert torch.equal(st["model"]["w"], state(1)["model"]["w"])
    warned = caplog.text
    assert "skipping checkpoint" in warned and paths[2].name in warned and paths[1].name in warned


def test_resume_without_any_intact_checkpoint_says_so(tmp_path):
    assert load_newest_intact(tmp_path) is None
    paths = write_three(tmp_path)
    for p in paths:
        p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="no intact checkpoint in"):
        load_newest_intact(tmp_path)


def test_a_checkpoint_without_a_hash_is_read_as_it_is(tmp_path):
    p = atomic_save(state(4), tmp_path / "old.pt")
    hash_path(p).unlink()
    assert verify(p) is None and load_checkpoint(p)["iter"] == 4
    p.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="old.pt cannot be read as a checkpoint"):
        load_checkpoint(p)


def test_stale_partial_files_are_removed(tmp_path):
    paths = write_three(tmp_path)
    d = paths[0].parent
    (d / ".iter_00000004.pt.abc123_x.tmp").write_bytes(b"x" * 1000)  # a killed write
    (d / "iter_00000005.pt.sha256").write_text("0" * 64 + "  iter_00000005.pt\n")  # its checkpoint never landed
    keep = sorted(p.name for p in d.iterdir() if not p.name.startswith(".") and "00000005" not in p.name)
    freed = remove_stale_partials(d)
    assert freed >= 1000
    assert sorted(p.name for p in d.iterdir()) == keep


def test_an_interrupted_write_leaves_the_previous_file_intact(tmp_path):
    p = atomic_save(state(1), tmp_path / "final.pt")

    class Boom:
        def __reduce__(self):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_save({"x": Boom()}, p)
    assert load_checkpoint(p)["iter"] == 1
    assert sorted(x.name for x in tmp_path.iterdir()) == ["final.pt", "final.pt.sha256"]


def _can_mount_tmpfs():
    if sys.platform != "linux" or not shutil.which("unshare"):
        return False
    r = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt || "
                        "mount -t tmpfs -o size=64k tmpfs /tmp"], capture_output=True)
    return r.returncode == 0


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="no user namespace to mount a small tmpfs in")
def test_a_full_disk_is_one_sentence_naming_the_file(tmp_path):
    """A real full file system: a 256 KiB tmpfs in a private mount namespace."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    code = ("import torch, sys\n"
            "from mlic.engine.checkpoint import atomic_save, CheckpointWriteError\n"
            f"try:\n    atomic_save({{'w': torch.zeros(1 << 20)}}, '{mnt}/ckpt/iter_00000001.pt')\n"
            "except CheckpointWriteError as e:\n    print('ERR', e); sys.exit(3)\n")
    r = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=256k tmpfs {mnt} && "
                        f"{sys.executable} -c \"$0\"; rc=$?; ls -a {mnt}/ckpt; exit $rc", code],
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 3, r.stderr
    assert f"ERR no space left on device writing {mnt}/ckpt/iter_00000001.pt" in r.stdout
    assert ".tmp" not in r.stdout  # the partial file went away


def test_write_errors_name_the_file(tmp_path, monkeypatch):
    import errno

    import mlic.integrity as I

    def no_space(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(I.tempfile, "mkstemp", no_space)
    with pytest.raises(CheckpointWriteError, match=f"^no space left on device writing {tmp_path}/x.pt$"):
        atomic_save(state(1), tmp_path / "x.pt")


def test_ctrl_c_during_a_checkpoint_write_lands_after_it(tmp_path):
    """A SIGINT that arrives while torch's zip writer is writing (which would turn the
    KeyboardInterrupt into a RuntimeError) interrupts once the file and its hash are whole."""
    import os
    import signal

    from mlic.engine.checkpoint import atomic_save
    from mlic.integrity import verify_file

    state = {"w": torch.arange(200_000, dtype=torch.float32)}
    original = torch.save

    def save_with_interrupt(obj, f, *a, **k):
        os.kill(os.getpid(), signal.SIGINT)  # the handler runs at the next bytecode, inside the write
        return original(obj, f, *a, **k)

    torch.save = save_with_interrupt
    try:
        with pytest.raises(KeyboardInterrupt):
            atomic_save(state, tmp_path / "ck.pt")
    finally:
        torch.save = original
    assert verify_file(tmp_path / "ck.pt") is not None
    assert torch.equal(torch.load(tmp_path / "ck.pt")["w"], state["w"])
    assert not list(tmp_path.glob("*.tmp"))
