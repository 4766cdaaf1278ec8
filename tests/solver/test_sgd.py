"""Caffe SGD (SPEC section 5): lr policies, the update rule, multipliers, clipping."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from mlic.solver import CaffeSGD, learning_rate


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
