"""Caffe SGD (SPEC section 5): lr policies, update rule, iter_size, snapshots."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from mlic.caffe import CaffeNet
from mlic.caffe.compare import compare_case
from mlic.solver import CaffeSGD, Solver, learning_rate


def f32(x):
    return float(np.float32(x))


@pytest.mark.parametrize("policy,kw,it,expect", [
    ("fixed", {}, 1000, 0.01),
    ("step", dict(gamma=0.1, stepsize=100), 99, 0.01),
    ("step", dict(gamma=0.1, stepsize=100), 250, 0.01 * 0.1**2),
    ("exp", dict(gamma=0.99), 10, 0.01 * 0.99**10),
    ("inv", dict(gamma=1e-4, power=0.75), 5000, 0.01 * (1 + 1e-4 * 5000) ** -0.75),
    ("multistep", dict(gamma=0.5, stepvalue=[10, 30]), 9, 0.01),
    ("multistep", dict(gamma=0.5, stepvalue=[10, 30]), 10, 0.005),
    ("multistep", dict(gamma=0.5, stepvalue=[10, 30]), 45, 0.0025),
    ("poly", dict(power=2.0, max_iter=200), 50, 0.01 * (1 - 50 / 200) ** 2),
    ("sigmoid", dict(gamma=-0.05, stepsize=100), 120, 0.01 / (1 + math.exp(0.05 * 20))),
])
def test_lr_policies(policy, kw, it, expect):
    got = learning_rate(policy, it, 0.01, **kw)
    assert got == pytest.approx(expect, rel=1e-6)
    assert got == f32(got)  # Caffe's rate is a float


def test_lr_policy_errors():
    with pytest.raises(ValueError, match="unknown lr_policy 'cosine'"):
        learning_rate("cosine", 0, 0.1)
    with pytest.raises(ValueError, match="'step' needs stepsize"):
        learning_rate("step", 0, 0.1, gamma=0.1)
    with pytest.raises(ValueError, match="'poly' needs power, max_iter"):
        learning_rate("poly", 0, 0.1)


def caffe_sgd_ref(params, grads_per_iter, lr, lr_mult, decay_mult, momentum, wd):
    """SPEC section 5 in float64 numpy: diff += wd*decay*data; h = m*h + rate*lr_mult*diff;
    data -= h."""
    data = [p.copy().astype(np.float64) for p in params]
    hist = [np.zeros_like(d) for d in data]
    for it, grads in enumerate(grads_per_iter):
        for i in range(len(data)):
            if lr_mult[i] == 0:
                continue
            g = np.zeros_like(data[i]) if grads[i] is None else grads[i].astype(np.float64)
            g = g + wd * decay_mult[i] * data[i]
            hist[i] = momentum * hist[i] + lr(it) * lr_mult[i] * g
            data[i] = data[i] - hist[i]
    return data


def test_update_rule_against_spec():
    rng = np.random.default_rng(0)
    init = [rng.standard_normal((3, 4)).astype(np.float32) for _ in range(4)]
    ps = [nn.Parameter(torch.from_numpy(a.copy())) for a in init]
    lr_mult, decay_mult = [1, 10, 2, 0], [1, 10, 1, 1]
    groups = [{"params": [p], "lr_mult": l, "decay_mult": d} for p, l, d in zip(ps, lr_mult, decay_mult)]
    opt = CaffeSGD(groups, base_lr=0.05, momentum=0.9, weight_decay=0.005, lr_policy="step", gamma=0.1, stepsize=2)
    grads = []
    for it in range(5):
        g = [rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal((3, 4)).astype(np.float32), None,
             rng.standard_normal((3, 4)).astype(np.float32)]
        grads.append(g)
        for p, gi in zip(ps, g):
            p.grad = None if gi is None else torch.from_numpy(gi.copy())
        opt.step()
    ref = caffe_sgd_ref(init, grads, lambda it: 0.05 * 0.1 ** (it // 2), lr_mult, decay_mult, 0.9, 0.005)
    for p, r in zip(ps, ref):
        np.testing.assert_allclose(p.detach().numpy(), r, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ps[3].detach().numpy(), init[3])  # lr_mult 0: fixed
    assert not np.array_equal(ps[2].detach().numpy(), init[2])  # no gradient: weight decay still moves it
    assert opt.iter == 5


def test_no_grad_param_decays_unless_switched_off():
    a = nn.Parameter(torch.ones(3))
    opt = CaffeSGD([a], base_lr=0.1, weight_decay=0.5)
    opt.step()
    np.testing.assert_allclose(a.detach().numpy(), 1 - 0.1 * 0.5, rtol=1e-6)  # decay alone shrinks it
    b = nn.Parameter(torch.ones(3))
    opt = CaffeSGD([b], base_lr=0.1, weight_decay=0.5, decay_without_grad=False)
    opt.step()
    np.testing.assert_array_equal(b.detach().numpy(), 1)


def test_per_parameter_attributes_of_a_plain_module():
    m = nn.Linear(2, 2)
    m.weight.lr_mult, m.weight.decay_mult = 1.0, 1.0
    m.bias.lr_mult, m.bias.decay_mult = 2.0, 0.0
    opt = CaffeSGD(m.parameters(), base_lr=0.1, weight_decay=0.1)
    mults = sorted((g["lr_mult"], g["decay_mult"]) for g in opt.param_groups)
    assert mults == [(1.0, 1.0), (2.0, 0.0)]
    w0, b0 = m.weight.detach().clone(), m.bias.detach().clone()
    m.weight.grad = torch.ones_like(m.weight)
    m.bias.grad = torch.ones_like(m.bias)
    opt.step()
    torch.testing.assert_close(m.weight.detach(), w0 - 0.1 * (1 + 0.1 * w0))
    torch.testing.assert_close(m.bias.detach(), b0 - 0.1 * 2 * 1)


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


def test_multistep_counter_and_clip():
    p = nn.Parameter(torch.zeros(2))
    opt = CaffeSGD([p], base_lr=1.0, lr_policy="multistep", gamma=0.5, stepvalue=[1, 2], clip_gradients=1.0)
    rates = []
    for _ in range(4):
        rates.append(opt._rate())
        opt.iter += 1
    assert rates == [1.0, 0.5, 0.25, 0.25]
    opt.iter, opt.current_step = 0, 0
    p.grad = torch.tensor([3.0, 4.0])  # norm 5 -> scaled to norm 1
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([-0.6, -0.8]))


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
