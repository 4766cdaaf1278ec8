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
        rates.append(opt.get_lr())
        opt.step()
    assert rates == [1.0, 0.5, 0.25, 0.25]
    opt = CaffeSGD([p], base_lr=1.0, lr_policy="multistep", gamma=0.5, stepvalue=[1, 2], clip_gradients=1.0)
    p.grad = torch.tensor([3.0, 4.0])  # norm 5 -> scaled to norm 1
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([-0.6, -0.8]))


@pytest.mark.parametrize("stepvalue", [[3, 1], [2, 2, 2], [1, 3]])
def test_multistep_rate_reported_is_the_rate_applied(stepvalue):
    """Caffe's multistep counter passes at most one step value per iteration, also when the
    values do not increase; get_lr() (what the log shows) and learning_rate() agree with
    the rate each update applies (momentum 0, gradient 1: the parameter moves by the rate)."""
    p = nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = CaffeSGD([p], base_lr=1.0, lr_policy="multistep", gamma=0.1, stepvalue=stepvalue)
    counter = 0
    for it in range(6):
        # Caffe's loop: `if (current_step < n && iter >= stepvalue[current_step]) current_step++`
        if counter < len(stepvalue) and it >= stepvalue[counter]:
            counter += 1
        expect = f32(f32(0.1) ** counter)  # Caffe: base_lr * pow(gamma, step), float fields
        reported = opt.get_lr()
        before = float(p.detach())
        p.grad = torch.ones(1, dtype=torch.float64)
        opt.step()
        assert reported == expect == learning_rate("multistep", it, 1.0, gamma=0.1, stepvalue=stepvalue)
        assert before - float(p.detach()) == pytest.approx(expect, rel=1e-12)


@pytest.mark.parametrize("stepvalue", [[3, 1], [2, 2, 2], [1, 3], [0, 5, 4, 4]])
def test_multistep_iterations_and_the_warning(stepvalue):
    from mlic.solver.sgd import multistep_iterations, stepvalue_warning

    counter, steps = 0, []
    for it in range(12):  # Caffe's loop, as above
        if counter < len(stepvalue) and it >= stepvalue[counter]:
            counter += 1
            steps.append(it)
    assert multistep_iterations(stepvalue) == steps
    note = stepvalue_warning(stepvalue)
    if sorted(set(stepvalue)) == stepvalue:
        assert note is None
    else:
        assert note is not None and f"drops at iterations {', '.join(map(str, steps))} " in note


def test_state_dict_round_trip_and_torch_format():
    """state_dict() has torch.optim's layout (parameters by index over the groups); a
    solver loaded from it continues exactly as the original."""
    torch.manual_seed(0)
    a, b = nn.Parameter(torch.randn(3, 2, 3, 3).contiguous(memory_format=torch.channels_last)), nn.Parameter(torch.randn(4))
    groups = [{"params": [a], "lr_mult": 1.0, "decay_mult": 1.0}, {"params": [b], "lr_mult": 2.0, "decay_mult": 0.0}]
    opt = CaffeSGD(groups, base_lr=0.1, momentum=0.9, weight_decay=0.01)
    for _ in range(2):
        a.grad, b.grad = torch.randn_like(a), torch.randn_like(b)
        opt.step()
    sd = opt.state_dict()
    assert sorted(sd["state"]) == [0, 1] and [g["params"] for g in sd["param_groups"]] == [[0], [1]]
    assert sd["param_groups"][1]["lr_mult"] == 2.0 and sd["caffe"]["iter"] == 2
    a2, b2 = nn.Parameter(a.detach().clone()), nn.Parameter(b.detach().clone())
    opt2 = CaffeSGD([{"params": [a2], "lr_mult": 1.0, "decay_mult": 1.0},
                     {"params": [b2], "lr_mult": 2.0, "decay_mult": 0.0}], base_lr=0.1, momentum=0.9, weight_decay=0.01)
    opt2.load_state_dict(sd)
    ga, gb = torch.randn_like(a), torch.randn_like(b)
    for o, (x, y) in ((opt, (a, b)), (opt2, (a2, b2))):
        x.grad, y.grad = ga.clone(), gb.clone()
        o.step()
    assert torch.equal(a.detach(), a2.detach()) and torch.equal(b.detach(), b2.detach())
    with pytest.raises(ValueError, match="parameter groups do not match"):
        CaffeSGD([a2, b2], base_lr=0.1).load_state_dict(sd)


def test_building_the_solver_does_not_import_the_compiler_stack():
    """torch.optim.Optimizer imports torch._dynamo (seconds) on first use; a training job
    does not need it."""
    import subprocess
    import sys

    code = ("import sys, torch\nfrom torch import nn\nfrom mlic.solver import CaffeSGD\n"
            "p = nn.Parameter(torch.zeros(2)); o = CaffeSGD([p], base_lr=0.1, momentum=0.9)\n"
            "p.grad = torch.ones(2); o.step(); o.zero_grad(); o.load_state_dict(o.state_dict())\n"
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
