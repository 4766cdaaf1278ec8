"""mlic.ops.wsddn_two_stream (compiled kernel) against the pure-PyTorch reference."""
import pytest
import torch

from mlic import ops as mops
from mlic.ops.reference import wsddn_two_stream_ref
from tests.conftest import requires_cuda
from tests.ops.kernel_utils import (
    EMULATED_CUDA, FLOAT_DTYPES, HALF_DTYPES, KERNEL_DEVICES, assert_same, backend_of, device_or_skip, requires_ext,
)

pytestmark = requires_ext
ERRORS = (ValueError, RuntimeError, TypeError)
# On CUDA, C = 80 splits each column over 6 thread groups, C = 300 and R = 1 use one
# thread a column; (2, 500, 80) is the released head of one image pair
SHAPES = [(2, 10, 5), (1, 1, 1), (3, 1, 7), (2, 9, 1), (2, 500, 80), (1, 37, 3), (2, 7, 37), (1, 6, 300)]


def _run(backend, cls, det, g, which="both"):
    dev, dtype = cls.device, cls.dtype
    ck, dk = cls.clone().requires_grad_(), det.clone().requires_grad_()
    image, region = mops.wsddn_two_stream(ck, dk, backend=backend)
    ref_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    cr = cls.detach().cpu().to(ref_dtype).requires_grad_()
    dr = det.detach().cpu().to(ref_dtype).requires_grad_()
    rimage, rregion = wsddn_two_stream_ref(cr, dr)
    assert image.shape == rimage.shape and region.shape == rregion.shape
    assert image.dtype == dtype and region.dtype == dtype and image.device == dev
    assert_same(image, rimage, dtype=dtype, what="image_scores")
    assert_same(region, rregion, dtype=dtype, what="region_scores")
    gi = torch.randn(rimage.shape, generator=g, dtype=ref_dtype)
    gr = torch.randn(rregion.shape, generator=g, dtype=ref_dtype)
    outs, routs, grads = {
        "image": ([image], [rimage], [gi]),
        "region": ([region], [rregion], [gr]),
        "both": ([image, region], [rimage, rregion], [gi, gr]),
    }[which]
    got = torch.autograd.grad(outs, (ck, dk), [x.to(dev, dtype) for x in grads])
    want = torch.autograd.grad(routs, (cr, dr), grads)
    assert_same(got[0], want[0], dtype=dtype, what=f"d cls from {which}", grad=True)
    assert_same(got[1], want[1], dtype=dtype, what=f"d det from {which}", grad=True)


@pytest.mark.parametrize("which", ["image", "region", "both"])
@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_matches_reference(device, dtype, shape, which):
    dev = device_or_skip(device)
    g = torch.Generator().manual_seed(sum(shape))
    cls = (torch.randn(shape, generator=g, dtype=torch.float64) * 3).to(dev, dtype)
    det = (torch.randn(shape, generator=g, dtype=torch.float64) * 3).to(dev, dtype)
    _run(backend_of(device), cls, det, g, which)


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_large_logits_are_stable(device):
    dev = device_or_skip(device)
    g = torch.Generator().manual_seed(0)
    cls = torch.randn(2, 30, 6, generator=g) * 200 + 1000
    det = torch.randn(2, 30, 6, generator=g) * 200 - 1000
    image, region = mops.wsddn_two_stream(cls.to(dev), det.to(dev), backend=backend_of(device))
    assert torch.isfinite(image).all() and torch.isfinite(region).all()
    _run(backend_of(device), cls.to(dev), det.to(dev), g)


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_noncontiguous(device):
    dev = device_or_skip(device)
    g = torch.Generator().manual_seed(1)
    cls = torch.randn(3, 6, 11, generator=g).to(dev).transpose(1, 2)  # N x C x R viewed as N x R x C
    det = torch.randn(3, 11, 12, generator=g).to(dev)[:, :, ::2]
    assert cls.shape == det.shape == (3, 11, 6) and not cls.is_contiguous() and not det.is_contiguous()
    _run(backend_of(device), cls, det, g)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("device", [pytest.param("cuda", marks=requires_cuda), EMULATED_CUDA])
def test_half_precision(device, dtype):
    dev = device_or_skip(device)
    g = torch.Generator().manual_seed(2)
    cls = torch.randn(2, 50, 8, generator=g).to(dev, dtype)
    det = torch.randn(2, 50, 8, generator=g).to(dev, dtype)
    _run(backend_of(device), cls, det, g)


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_gradcheck(device):
    dev = device_or_skip(device)
    g = torch.Generator().manual_seed(3)
    # the emulated CUDA back end runs a host thread per CUDA thread: a smaller problem, once
    shape = (1, 3, 2) if device == EMULATED_CUDA else (2, 5, 4)
    cls = torch.randn(shape, generator=g, dtype=torch.float64).to(dev).requires_grad_()
    det = torch.randn(shape, generator=g, dtype=torch.float64).to(dev).requires_grad_()

    def f(a, b):
        return mops.wsddn_two_stream(a, b, backend=backend_of(device))

    assert torch.autograd.gradcheck(f, (cls, det))
    if device == EMULATED_CUDA:
        return
    assert torch.autograd.gradcheck(lambda a, b: f(a, b)[0], (cls, det))
    assert torch.autograd.gradcheck(lambda a, b: f(a, b)[1], (cls, det))
    # one input only
    assert torch.autograd.gradcheck(lambda a: f(a, det.detach()), (cls,))
    assert torch.autograd.gradcheck(lambda b: f(cls.detach(), b), (det,))


@requires_cuda
def test_cpu_and_cuda_agree():
    device_or_skip("cuda")
    g = torch.Generator().manual_seed(4)
    cls, det = torch.randn(4, 500, 80, generator=g), torch.randn(4, 500, 80, generator=g)
    gi, gr = torch.randn(4, 80, generator=g), torch.randn(4, 500, 80, generator=g)
    res = {}
    for dev in ("cpu", "cuda"):
        a, b = cls.to(dev).requires_grad_(), det.to(dev).requires_grad_()
        image, region = mops.wsddn_two_stream(a, b)
        torch.autograd.backward([image, region], [gi.to(dev), gr.to(dev)])
        res[dev] = [t.detach().cpu() for t in (image, region, a.grad, b.grad)]
    for name, x, y in zip(["image", "region", "d cls", "d det"], res["cuda"], res["cpu"]):
        assert_same(x, y, what=name, grad=name.startswith("d "))


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_bad_inputs(device):
    dev = device_or_skip(device)
    ok = torch.randn(2, 4, 3, device=dev)
    def f(*args):
        return mops.wsddn_two_stream(*args, backend=backend_of(device))

    cases = [
        ("cls_logits", lambda: f(ok[0], ok)),
        ("det_logits", lambda: f(ok, ok[None])),
        ("cls_logits|det_logits", lambda: f(ok, torch.randn(2, 4, 2, device=dev))),
        ("cls_logits|det_logits", lambda: f(ok, torch.randn(2, 5, 3, device=dev))),
        ("cls_logits|det_logits", lambda: f(ok, ok.double())),
        ("cls_logits", lambda: f(ok.long(), ok)),
        ("cls_logits|det_logits", lambda: f(torch.randn(2, 0, 3, device=dev), torch.randn(2, 0, 3, device=dev))),
        ("cls_logits|det_logits", lambda: f(torch.randn(2, 4, 0, device=dev), torch.randn(2, 4, 0, device=dev))),
    ]
    if dev.type == "cuda":
        cases.append(("cls_logits|det_logits|device", lambda: f(ok, ok.cpu())))
    for arg, call in cases:
        with pytest.raises(ERRORS, match=arg):
            call()


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_special_values(device):
    """-inf logits give probability 0, a NaN spoils its own row (class softmax) or column
    (region softmax) as in torch.softmax, and logits far below the maximum (exp under
    FLT_MIN) give 0 without disturbing the rest."""
    dev = device_or_skip(device)
    g = torch.Generator().manual_seed(9)
    cls = torch.randn(2, 40, 21, generator=g)
    det = torch.randn(2, 40, 21, generator=g)
    cls[0, 3, 5] = -float("inf")
    cls[0, 4, :] = -float("inf")  # a whole row: NaN, as torch.softmax
    cls[1, 7, 2] = float("nan")
    det[0, 11, 4] = -float("inf")
    det[1, 12, 6] = float("nan")
    cls[1, 20, 0] = -200.0  # exp(-200 - max): 0 in float32 either way
    det[0, :, 9] = torch.linspace(-120.0, 0.0, 40)  # runs through the flush-to-zero range of exp
    image, region = (t.cpu() for t in mops.wsddn_two_stream(cls.to(dev), det.to(dev), backend=backend_of(device)))
    rimage, rregion = wsddn_two_stream_ref(cls.double(), det.double())
    assert_same(region, rregion.float(), what="region_scores")
    assert_same(image, rimage.float(), what="image_scores")
    assert torch.isnan(region[0, 4]).all() and torch.isnan(region[1, 7]).all() and torch.isnan(region[1, :, 6]).all()
    assert region[0, 3, 5] == 0 and region[0, 11, 4] == 0
    assert torch.isfinite(region[0, :4]).all()


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_half_precision_cpu(dtype):
    g = torch.Generator().manual_seed(10)
    cls = torch.randn(2, 50, 19, generator=g).to(dtype)
    det = torch.randn(2, 50, 19, generator=g).to(dtype)
    _run("auto", cls, det, g)
