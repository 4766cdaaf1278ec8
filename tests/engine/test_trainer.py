import csv

import pytest
import torch
from torch import nn

from mlic.engine import (DivergenceWatch, EvalHook, HookBase, MetricsWriter, PeriodicCheckpointer, Trainer,
                         TrainingDiverged, latest_checkpoint, load_checkpoint)
from mlic.engine.checkpoint import atomic_save, list_checkpoints


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


def make(tmp_path, max_iter, period=0, iter_size=1, lr=0.01, keep=2):
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

    hooks = [MetricsWriter(period=1, tensorboard=False, progress=False), PeriodicCheckpointer(period, keep=keep)]
    return Trainer(model, TorchSGD(model.parameters(), lr=lr), batches, step_fn, max_iter, str(tmp_path),
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
    class Kill(HookBase):
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
    with pytest.raises(TrainingDiverged, match="at iteration 1: the loss is nan; no checkpoint was written"):
        t.train()


def test_a_diverging_run_never_checkpoints_inf_and_names_the_last_real_checkpoint(tmp_path):
    """A rate of 1e38 with a checkpoint every iteration: the update that overflows is
    caught before anything is written; the message names the last checkpoint on disk."""
    t = make(tmp_path, 50, period=1, lr=0.01, keep=0)

    class Boost(HookBase):  # the rate jumps after iteration 3
        def after_step(self):
            if self.trainer.iter == 3:
                self.trainer.solver.opt.param_groups[0]["lr"] = 1e38

    boost = Boost()
    boost.trainer = t
    t.hooks.insert(0, boost)
    with pytest.raises(TrainingDiverged) as err:
        t.train()
    msg = str(err.value)
    assert "training diverged at iteration" in msg
    written = [p for _, p in list_checkpoints(tmp_path)]
    assert written, "the healthy iterations were checkpointed"
    assert f"the last checkpoint, {written[0]}, is intact" in msg
    for p in written:
        state = load_checkpoint(p)
        assert all(torch.isfinite(v).all() for v in state["model"].values())
    stopped_at = int(msg.split("iteration ")[1].split(":")[0])
    assert int(written[0].stem.split("_")[1]) == stopped_at - 1


def test_non_finite_solver_history_is_never_written(tmp_path):
    t = make(tmp_path, 2, period=1)
    t.train()
    before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    t.iter = 5
    buf = next(iter(t.solver.opt.state.values()))["momentum_buffer"]
    buf[0] = float("inf")
    with pytest.raises(TrainingDiverged, match="solver's history holds inf or nan"):
        t.hooks[1].save()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before


def test_gradient_explosion_and_pinned_scores_stop_training(tmp_path):
    t = make(tmp_path, 40)
    watch = DivergenceWatch(grad_factor=100, warmup=5)
    watch.trainer = t
    t.hooks.insert(1, watch)
    step = t.step_fn
    t.step_fn = lambda m, b: {"loss": step(m, b)["loss"] * (1e6 if t.iter >= 8 else 1.0)}
    with pytest.raises(TrainingDiverged, match=r"at iteration 9: the gradient norm .* times its median"):
        t.train()

    t = make(tmp_path / "p", 40)
    watch = DivergenceWatch(patience=3)
    watch.trainer = t
    t.hooks.insert(1, watch)
    t.step_fn = lambda m, b: {**step(m, b), "scores_pinned": torch.tensor(float(t.iter >= 4))}
    with pytest.raises(TrainingDiverged, match="at iteration 7: every image score"):
        t.train()


def test_checkpoints_kept_and_none_at_the_last_iteration(tmp_path):
    t = make(tmp_path, 10, period=2, keep=2)
    t.train()
    assert [it for it, _ in list_checkpoints(tmp_path)] == [8, 6]  # 10 is the last: final.pt's
    t = make(tmp_path / "all", 10, period=3, keep=0)
    t.train()
    assert [it for it, _ in list_checkpoints(tmp_path / "all")] == [9, 6, 3]


def test_atomic_save_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "x.pt"
    atomic_save({"a": 1}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError):
        atomic_save({"a": Boom()}, path)
    assert torch.load(path) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.pt", "x.pt.sha256"]


def test_time_per_phase_is_measured(tmp_path):
    """phase_seconds splits each iteration into data, forward, backward, update and hooks."""
    import time

    model = nn.Linear(2, 1)

    def batches(start):
        while True:
            time.sleep(0.02)
            yield torch.ones(3, 2)

    def step_fn(m, b):
        time.sleep(0.01)
        return {"loss": m(b).sum()}

    class SlowHook(HookBase):
        def after_step(self):
            time.sleep(0.005)

    t = Trainer(model, TorchSGD(model.parameters()), batches, step_fn, 4, str(tmp_path), hooks=[SlowHook()],
                log=lambda m: None)
    t0 = time.perf_counter()
    t.train()
    wall = time.perf_counter() - t0
    s = t.phase_seconds
    assert set(s) == {"data", "forward", "backward", "update", "hooks"}
    assert s["data"] >= 4 * 0.02 and 4 * 0.01 <= s["forward"] < 4 * 0.02 and s["hooks"] >= 4 * 0.005
    assert s["backward"] >= 0 and s["update"] >= 0 and sum(s.values()) <= wall


@pytest.mark.parametrize("spoiled,expect", [
    ((), "the last checkpoint, {3}, is intact: lower the rate and continue from it with --resume"),
    ((3,), "the last checkpoint with sane weights is {2}; the newer {3} already hold(s) weights up to 1e+20, beyond "
           "the 1e+04 a sane one may reach: remove the newer ones"),
    ((1, 2, 3), "the checkpoints written before it already hold weights up to 1e+20, beyond the 1e+04 a sane one may "
             "reach, so none is a point to continue from: start afresh (without --resume) with a lower rate"),
])
def test_the_advice_after_a_divergence_names_a_checkpoint_with_sane_weights(tmp_path, spoiled, expect):
    t = make(tmp_path, 4, period=1, keep=0)
    t.train()
    paths = {it: p for it, p in list_checkpoints(tmp_path)}
    assert sorted(paths) == [1, 2, 3] and t.start_peak < 1  # the limit is then 1e4
    for it in spoiled:  # weights that exploded, in a checkpoint that is still intact
        st = load_checkpoint(paths[it])
        st["model"]["0.weight"][0, 0] = 1e20
        atomic_save(st, paths[it])
    resumed = make(tmp_path, 4, period=1)
    resumed.load_state_dict(load_checkpoint(paths[1]))
    assert resumed.start_peak == t.start_peak  # kept in the checkpoints
    with pytest.raises(TrainingDiverged) as exc:
        resumed.stop("the loss is nan")
    assert expect.format(*[None] + [paths[i] for i in (1, 2, 3)]) in str(exc.value), str(exc.value)
