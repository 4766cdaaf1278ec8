"""Caffe's Solver run by the engine's loop: iter_size, snapshots and restore, solver
files, and the recorded Caffe solver case (SPEC section 5)."""
import numpy as np
import pytest
import torch

from mlic.caffe import CaffeNet
from mlic.compare import compare_case
from mlic.engine.caffe_solver import Solver
from mlic.solver import CaffeSGD


def test_iter_size_averages_accumulated_gradients():
    text = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 4 dim: 3 } } }
layer { name: "t" type: "Input" top: "t" input_param { shape { dim: 4 dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip" inner_product_param { num_output: 2
  weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } } }
layer { name: "l" type: "EuclideanLoss" bottom: "ip" bottom: "t" top: "l" }
"""
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((4, 3)).astype(np.float32) for _ in range(2)]
    ts = [rng.standard_normal((4, 2)).astype(np.float32) for _ in range(2)]
    torch.manual_seed(0)
    net1 = CaffeNet(text, "TRAIN")
    torch.manual_seed(0)
    net2 = CaffeNet(text, "TRAIN")
    s1 = Solver('base_lr: 0.1 lr_policy: "fixed" momentum: 0.9 weight_decay: 0.01 iter_size: 2', net1)
    feeds = iter([dict(x=xs[0], t=ts[0]), dict(x=xs[1], t=ts[1])] * 3)
    losses = s1.step(3, lambda: next(feeds))
    # the same step by hand: average of the two gradients
    opt = CaffeSGD(net2.param_groups(), base_lr=0.1, momentum=0.9, weight_decay=0.01)
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        objs = [net2.forward_backward(x=x, t=t) for x, t in zip(xs, ts)]
        for p in net2.parameters():
            p.grad /= 2
        opt.step()
    assert losses[-1] == pytest.approx(float(sum(objs)) / 2, rel=1e-6)
    for a, b in zip(net1.parameters(), net2.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


SOLVER_NET_LAYERS = """
  layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 8 dim: 5 } } }
  layer { name: "t" type: "Input" top: "t" input_param { shape { dim: 8 dim: 3 } } }
  layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "ip1" param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
    inner_product_param { num_output: 16 weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.1 } } }
  layer { name: "relu" type: "ReLU" bottom: "ip1" top: "ip1" }
  layer { name: "drop" type: "Dropout" bottom: "ip1" top: "ip1" dropout_param { dropout_ratio: 0.3 } }
  layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2" inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
  layer { name: "loss" type: "SigmoidCrossEntropyLoss" bottom: "ip2" bottom: "t" top: "loss" }
"""
SOLVER_NET = ("net_param {" + SOLVER_NET_LAYERS + "}\n"
              'base_lr: 0.1 lr_policy: "inv" gamma: 0.01 power: 0.75 momentum: 0.9 weight_decay: 0.001\n'
              'random_seed: 3 type: "SGD"\n')


def test_snapshot_restore_continues_bit_identically(tmp_path):
    rng = np.random.default_rng(0)
    feed = dict(x=rng.standard_normal((8, 5)).astype(np.float32), t=rng.random((8, 3)).astype(np.float32))
    a = Solver(SOLVER_NET)
    assert a.net.phase == "TRAIN"
    a.step(3, feed)
    state = a.snapshot(tmp_path / "s_iter_3.solverstate.pt")
    assert (tmp_path / "s_iter_3.caffemodel").exists()
    later = a.step(4, feed)
    b = Solver(SOLVER_NET)
    b.restore(state)
    assert b.iter == 3
    again = b.step(4, feed)
    assert later == again
    for p, q in zip(a.net.parameters(), b.net.parameters()):
        assert torch.equal(p, q)
    for p, q in zip(a.optimizer.param_groups, b.optimizer.param_groups):
        assert torch.equal(a.optimizer.state[p["params"][0]]["history"], b.optimizer.state[q["params"][0]]["history"])


def test_solver_file_with_a_relative_net_path(tmp_path, monkeypatch):
    (tmp_path / "train.prototxt").write_text(SOLVER_NET_LAYERS)
    (tmp_path / "solver.prototxt").write_text('net: "train.prototxt"\nbase_lr: 0.01\nlr_policy: "fixed"\n'
                                              'snapshot: 2\nsnapshot_prefix: "%s/snap"\n' % tmp_path)
    monkeypatch.chdir("/")
    s = Solver(str(tmp_path / "solver.prototxt"))
    assert s.net.file == str(tmp_path / "train.prototxt") and s.net.phase == "TRAIN"
    feed = dict(x=np.zeros((8, 5), np.float32), t=np.zeros((8, 3), np.float32))
    losses = s.step(2, feed)
    assert len(losses) == 2 and (tmp_path / "snap_iter_2.solverstate.pt").exists()
    assert (tmp_path / "snap_iter_2.caffemodel").exists()


def test_solver_rejects_other_types():
    with pytest.raises(ValueError, match="only the SGD solver"):
        Solver(SOLVER_NET.replace('type: "SGD"', 'type: "Adam"'))


def test_solver_reference_case(caffe_ref):
    """Five Caffe SGD steps with lr_mult/decay_mult, a no-gradient layer that still decays
    and a fixed layer."""
    res = compare_case(caffe_ref / "solver.npz")
    assert res.ok, res.table()
    assert sum(r.key.startswith("iter5/param/") for r in res.rows) == 8
