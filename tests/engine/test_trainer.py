import csv

import pytest
import torch
from torch import nn

from mlic.engine import EvalHook, MetricsWriter, PeriodicCheckpointer, Trainer, latest_checkpoint, load_checkpoint
from mlic.engine.checkpoint import atomic_save


class TorchSGD:
    """The solver contract of the trainer, over torch.optim.SGD."""

    def __init__(self, params, lr=0.01):
        self.opt = torch.optim.SGD(params, lr=lr, momentum=0.9)

    def zero_grad(self):
        self.opt.zero_grad(set_to_none=True)

    def step(self):
        self.opt.step()
        return self.opt.param_groups[0]["lr"]

    def state_dict(self):
        return self.opt.state_dict()

    def load_state_dict(self, s):
        self.opt.load_state_dict(s)


def make(tmp_path, max_iter, period=0, iter_size=1):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 1))
    data_gen = torch.Generator().manual_seed(1)
    xs = torch.randn(64, 4, generator=data_gen)
    ys = xs.sum(1, keepdim=True)

    def batches(start):  # batch i is a pure function of i
        i = start
        while True:
            j = (i * 4) % 64
            yield xs[j:j + 4], ys[j:j + 4]
            i += 1

    def step_fn(m, b):
        x, y = b
        loss = ((m(x) - y) ** 2).mean()
        return {"loss": loss}

    hooks = [PeriodicCheckpointer(period), MetricsWriter(period=1, tensorboard=False, progress=False)]
    return Trainer(model, TorchSGD(model.parameters()), batches, step_fn, max_iter, str(tmp_path),
                   iter_size=iter_size, hooks=hooks, images_per_batch=4, log=lambda m: None)


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("iter_size", [1, 2])
def test_resume_is_bit_identical(tmp_path, iter_size):
    full = make(tmp_path / "full", 8, iter_size=iter_size)
    full.train()
    part = make(tmp_path / "part", 8, period=3, iter_size=iter_size)
    # Killed after iteration 5: the last checkpoint is iteration 3.
    class Kill(PeriodicCheckpointer.__bases__[0]):
        def after_step(self):
            if self.trainer.iter == 5:
                raise KeyboardInterrupt

    kill = Kill()
    kill.trainer = part
    part.hooks.append(kill)
    with pytest.raises(KeyboardInterrupt):
        part.train()
    assert not part.completed
    ck = latest_checkpoint(tmp_path / "part")
    assert ck.name == "iter_00000003.pt"
    resumed = make(tmp_path / "part", 8, period=3, iter_size=iter_size)
    resumed.load_state_dict(load_checkpoint(ck))
    assert resumed.iter == 3
    resumed.train()
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    # The log has each iteration once, and the resumed losses equal the uninterrupted ones.
    r_full, r_part = rows(tmp_path / "full" / "log.csv"), rows(tmp_path / "part" / "log.csv")
    assert [r["iter"] for r in r_part] == [str(i) for i in range(1, 9)]
    assert [r["loss"] for r in r_full] == [r["loss"] for r in r_part]


def test_loss_decreases_and_eval_hook_runs(tmp_path):
    t = make(tmp_path, 30)
    calls = []
    t.hooks.insert(0, EvalHook(10, lambda tr: calls.append(tr.iter) or {"score": float(tr.iter)}))
    t.hooks[0].trainer = t
    t.train()
    assert calls == [10, 20, 30]
    log = rows(tmp_path / "log.csv")
    assert float(log[-1]["loss"]) < float(log[0]["loss"])
    assert [r["score"] for r in rows(tmp_path / "eval.csv")] == ["10.0", "20.0", "30.0"]


def test_non_finite_loss_stops_with_clear_error(tmp_path):
    t = make(tmp_path, 3)
    t.step_fn = lambda m, b: {"loss": m(b[0]).sum() * float("nan")}
    with pytest.raises(FloatingPointError, match="iteration 0"):
        t.train()


def test_atomic_save_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "x.pt"
    atomic_save({"a": 1}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError):
        atomic_save({"a": Boom()}, path)
    assert torch.load(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]
