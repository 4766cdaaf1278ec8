"""The registered torch.ops.mlic operators: torch.library.opcheck on the calls the public
functions make, coverage of every registered op, and torch.compile(fullgraph=True)."""
import inspect

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from mlic import ops as mops
from tests.conftest import DEVICES
from tests.ops.kernel_utils import assert_same, device_or_skip, distinct_features, requires_ext

pytestmark = requires_ext
PUBLIC = {"roi_pool", "roi_spp", "spp", "caffe_pool2d", "wsddn_two_stream"}


def _inputs(name, dtype=torch.float64, device="cpu"):
    """Small float inputs of each public op (max-type ops without ties) and the call."""
    g = torch.Generator().manual_seed(0)
    m = mops
    if name == "wsddn_two_stream":
        cls = torch.randn(2, 6, 4, generator=g, dtype=dtype).to(device)
        det = torch.randn(2, 6, 4, generator=g, dtype=dtype).to(device)
        return (cls, det), lambda c, d: m.wsddn_two_stream(c, d)
    x = distinct_features(2, 3, 9, 8, g, dtype, spacing=0.01).to(device)
    rois = torch.tensor([[0, 0, 0, 7, 8, 0.5], [1, 2, 1, 5, 6, 1.0], [1, 3, 3, 3, 3, 0.2], [0, 20, 20, 30, 30, 1.0],
                         [0, 0, 0, 7, 8, 0.7]], dtype=dtype, device=device)
    calls = {
        "roi_pool": lambda f: m.roi_pool(f, rois, 3, 2, spatial_scale=1.0, score_scale=2.0, score_bias=0.5),
        "roi_pool_deterministic": lambda f: m.roi_pool(f, rois, 3, 2, score_scale=2.0, deterministic=True),
        "roi_pool_atomic": lambda f: m.roi_pool(f, rois, 3, 2, score_scale=2.0, deterministic=False),
        "roi_pool_5col": lambda f: m.roi_pool(f, rois[:, :5], 2, 2, spatial_scale=0.5),
        "roi_spp": lambda f: m.roi_spp(f, rois, [1, 2, (3, 1)], score_scale=1.5),
        "spp_max": lambda f: m.spp(f, 3, "max"),
        "spp_ave": lambda f: m.spp(f, 3, "ave"),
        "pool_max": lambda f: m.caffe_pool2d(f, 3, 2, 1, "max"),
        "pool_ave": lambda f: m.caffe_pool2d(f, (3, 2), (2, 1), (1, 0), "ave"),
    }
    return (x,), calls[name]


SAMPLES = ["roi_pool", "roi_pool_deterministic", "roi_pool_atomic", "roi_pool_5col", "roi_spp", "spp_max", "spp_ave",
           "pool_max", "pool_ave", "wsddn_two_stream"]


def _float_outputs(out):
    out = out if isinstance(out, (tuple, list)) else (out,)
    return [o for o in out if o.is_floating_point()]


class _Capture(TorchDispatchMode):
    """Records the first call of every mlic:: operator that reaches the backend (below autograd)."""

    def __init__(self):
        super().__init__()
        self.calls = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "mlic" and func not in self.calls:
            keep = lambda t: t.detach().clone() if isinstance(t, torch.Tensor) else t  # noqa: E731
            self.calls[func] = (tree_map(keep, args), tree_map(keep, kwargs))
        return func(*args, **kwargs)


def _capture(name, global_deterministic=False, device="cpu"):
    inputs, call = _inputs(name, device=device)
    inputs = [t.clone().requires_grad_() for t in inputs]
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(global_deterministic)
    try:
        with _Capture() as cap:
            outs = _float_outputs(call(*inputs))
            torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
    finally:
        torch.use_deterministic_algorithms(was)
    return cap.calls


def _with_grad(t):
    if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dim() >= 3:  # features / logits
        return t.requires_grad_()
    return t


def _registered_ops():
    return sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("mlic::"))


def test_ops_are_registered():
    names = _registered_ops()
    assert names, "no operator registered in the mlic namespace"
    for public in PUBLIC:
        assert callable(getattr(mops, public)), f"mlic.ops.{public} missing"


def test_public_ops_are_plain_functions():
    # help(), IDEs and docs see each op's own signature and docstring
    for name in PUBLIC:
        fn = getattr(mops, name)
        assert inspect.isfunction(fn) and fn.__module__ == "mlic.ops" and fn.__qualname__ == name, name
        params = inspect.signature(fn).parameters
        assert "backend" in params and params["backend"].kind is inspect.Parameter.KEYWORD_ONLY, name
        assert params["backend"].default == "auto" and fn.__doc__, name


@pytest.mark.parametrize("name", SAMPLES)
def test_one_return_convention(name):
    # what the Caffe layer outputs: one tensor, the two-stream head its (image, region) scores;
    # the registered operator returns the argmax after the output
    inputs, call = _inputs(name)
    out = call(*inputs)
    if name == "wsddn_two_stream":
        assert isinstance(out, tuple) and len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out)
        assert out[0].shape == inputs[0].shape[::2] and out[1].shape == inputs[0].shape
        return
    assert isinstance(out, torch.Tensor) and out.is_floating_point()
    calls = _capture(name)
    (op, (args, kwargs)), = [(op, c) for op, c in calls.items() if op.name().split("::")[1].split(".")[0] in PUBLIC]
    raw = op(*args, **kwargs)
    assert isinstance(raw, tuple) and len(raw) == 2 and raw[1].dtype == torch.int32
    assert torch.equal(raw[0].reshape(out.shape), out)


@pytest.mark.parametrize("name", SAMPLES)
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device, name):
    device_or_skip(device)
    calls = _capture(name, device=device)
    assert calls, f"mlic.ops call {name} reached no torch.ops.mlic operator"
    for op, (args, kwargs) in calls.items():
        # public-level ops are checked with inputs that require grad (their autograd registration)
        if op.name().split("::")[1].split(".")[0] in PUBLIC:
            args = tree_map(_with_grad, args)
        torch.library.opcheck(op, args, kwargs)


def test_every_registered_op_is_exercised():
    seen = set()
    for name in SAMPLES:
        seen |= {op.name() for op in _capture(name)}
    seen |= {op.name() for op in _capture("roi_pool", global_deterministic=True)}
    # names without overload suffix: "mlic::op" for op.default
    seen_base = {n.split(".")[0] for n in seen}
    missing = [n for n in _registered_ops() if n.split(".")[0] not in seen_base]
    assert not missing, f"registered ops never reached from the public functions on CPU: {missing}"
    listed = {f"mlic::{n}" for n in mops.OP_NAMES}
    assert listed <= set(_registered_ops()), f"mlic.ops.OP_NAMES lists unregistered ops: {listed - set(_registered_ops())}"


@pytest.mark.parametrize("name", SAMPLES)
def test_compile_fullgraph(name):
    inputs, call = _inputs(name, torch.float32)
    torch._dynamo.reset()
    compiled = torch.compile(call, backend="aot_eager", fullgraph=True)
    xe = [t.clone().requires_grad_() for t in inputs]
    xc = [t.clone().requires_grad_() for t in inputs]
    oe, oc = call(*xe), compiled(*xc)
    oe, oc = (oe if isinstance(oe, tuple) else (oe,)), (oc if isinstance(oc, tuple) else (oc,))
    for a, b in zip(oc, oe):
        if a.is_floating_point():
            assert_same(a, b, what=f"{name} compiled forward")
        else:
            assert torch.equal(a, b)
    ge = [torch.randn_like(o) for o in _float_outputs(oe)]
    torch.autograd.backward(_float_outputs(oe), ge)
    torch.autograd.backward(_float_outputs(oc), ge)
    for a, b in zip(xc, xe):
        assert_same(a.grad, b.grad, what=f"{name} compiled backward", grad=True)


@pytest.mark.parametrize("name", ["roi_pool", "wsddn_two_stream"])
def test_compile_inductor(name):
    inputs, call = _inputs(name, torch.float32)
    torch._dynamo.reset()
    compiled = torch.compile(call, backend="inductor", fullgraph=True)
    xe = [t.clone().requires_grad_() for t in inputs]
    xc = [t.clone().requires_grad_() for t in inputs]
    oe, oc = _float_outputs(call(*xe)), _float_outputs(compiled(*xc))
    for a, b in zip(oc, oe):
        assert_same(a, b, what=f"{name} inductor forward")
    torch.autograd.backward(oe, [torch.ones_like(o) for o in oe])
    torch.autograd.backward(oc, [torch.ones_like(o) for o in oc])
    for a, b in zip(xc, xe):
        assert_same(a.grad, b.grad, what=f"{name} inductor backward", grad=True)
