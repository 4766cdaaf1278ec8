"""The training loop keeps freed memory in the process (mlic.engine.allocator): blocks of
changing sizes are reused instead of being faulted in again every iteration."""
import platform
import subprocess
import sys

import pytest

PATTERN = """
import sys, torch
if sys.argv[1] == "keep":
    from mlic.engine.allocator import keep_freed_memory
    assert keep_freed_memory()
def minor_faults():
    return int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[7])
before = minor_faults()
for mib in range(4, 30):  # growing blocks: with glibc's defaults each is mapped anew and given back when freed
    for _ in range(3):
        a = torch.ones(mib << 18)
        del a
print(minor_faults() - before)
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_freed_blocks_are_reused_without_page_faults():
    def faults(mode):
        return int(subprocess.run([sys.executable, "-c", PATTERN, mode], capture_output=True, text=True,
                                  check=True).stdout.split()[-1])

    default, keep = faults("default"), faults("keep")
    assert default > 50000  # measured: about 125,000 (the blocks are faulted in at every allocation)
    assert keep < default / 4  # measured: 12,000-16,000 (only as the heap grows)


def test_the_trainer_sets_it(tmp_path, monkeypatch):
    from mlic.engine import trainer as trainer_module

    calls = []
    monkeypatch.setattr(trainer_module, "keep_freed_memory", lambda: calls.append(1) or True)
    import torch
    from torch import nn

    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def batches(start):
        while True:
            yield torch.ones(1, 2)

    t = trainer_module.Trainer(model, opt, batches, lambda m, b: {"loss": m(b).sum()}, 2, None, log=lambda s: None)
    t.train()
    assert calls == [1]
