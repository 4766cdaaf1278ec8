"""Shared helpers of the compiled-op tests: skip markers, input generators, comparisons."""
from __future__ import annotations

import pytest
import torch

import mlic
from mlic import _ext
from tests.conftest import DEVICES, requires_cuda

EXT = _ext.extension_available()
requires_ext = pytest.mark.skipif(
    not EXT,
    reason=f"the compiled extension mlic._C is not built ({_ext.extension_error()!r}); build it to test the kernels",
)


# The kernel tests' `device` parameter: "cpu", "cuda", and two back ends chosen by name
# (mlic.ops's `backend` argument): the CUDA back end run on the host for CPU tensors, and
# CUDA tensors through NVRTC beside the compiled kernels.
EMULATED_CUDA = "emulated-cuda"
NVRTC = "cuda-nvrtc"
KERNEL_DEVICES = DEVICES + [pytest.param(NVRTC, marks=requires_cuda), EMULATED_CUDA]


def backend_of(device: str) -> str:
    """The mlic.ops back end that a kernel test on `device` runs."""
    return {EMULATED_CUDA: "emulated-cuda", NVRTC: "nvrtc"}.get(device, "auto")


def operators(device: str):
    """The registered operators that a kernel test on `device` runs (they return the argmax
    too: mlic.ops.operators)."""
    from mlic import ops

    return ops.operators(backend_of(device))


def device_or_skip(device: str) -> torch.device:
    if device == EMULATED_CUDA:
        return torch.device("cpu")
    if device == NVRTC:
        from mlic.ops import _nvrtc

        ok, why = _nvrtc.available()
        if not ok:
            pytest.skip(f"the NVRTC back end cannot run here: {why}")
        return torch.device("cuda")
    if device == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("no CUDA device on this machine")
        if not _ext.extension_has_cuda():
            pytest.skip("mlic._C was built without CUDA kernels")
    return torch.device(device)


FLOAT_DTYPES = [torch.float32, torch.float64]
HALF_DTYPES = [torch.float16, torch.bfloat16]


def distinct_features(n, c, h, w, gen, dtype=torch.float32, device="cpu", spacing=1.0):
    """Features whose values are distinct within every plane (a shuffled ramp, centred), so the
    max of any window is unique: argmax comparisons are exact and gradcheck is valid."""
    planes = torch.stack([torch.randperm(h * w, generator=gen) for _ in range(n * c)]) if h * w else torch.zeros(n * c, 0)
    x = (planes.to(torch.float64) - (h * w) / 2) * spacing
    # a random offset per plane keeps channels different without creating ties inside a plane
    x = x + torch.rand(n * c, 1, generator=gen, dtype=torch.float64) * spacing * 0.5
    return x.reshape(n, c, h, w).to(dtype=dtype, device=device)


def random_rois(k, n, h, w, spatial_scale, gen, cols=6, half_frac=0.3, dtype=torch.float32, device="cpu"):
    """RoIs in the image frame (feature coordinates / spatial_scale): inside, partly or fully
    outside, inverted, tiny, and a share snapped so that x * spatial_scale ends in .5."""
    u = torch.rand(k, 4, generator=gen, dtype=torch.float64)
    span = torch.tensor([w, h, w, h], dtype=torch.float64)
    feat_xy = u * span * 1.6 - span * 0.3
    snap = torch.rand(k, 4, generator=gen) < half_frac
    feat_xy = torch.where(snap, torch.floor(feat_xy) + 0.5, feat_xy)
    xy = feat_xy / spatial_scale
    batch = torch.randint(0, max(n, 1), (k, 1), generator=gen).to(torch.float64)
    cols_ = [batch, xy]
    if cols == 6:
        cols_.append(torch.rand(k, 1, generator=gen, dtype=torch.float64))
    return torch.cat(cols_, 1).to(dtype=dtype, device=device)


def tol(dtype):
    return {
        torch.float64: dict(rtol=1e-12, atol=1e-12),
        torch.float32: dict(rtol=1e-6, atol=1e-6),
        torch.float16: dict(rtol=2e-3, atol=2e-3),
        torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
    }[dtype]


def grad_tol(dtype):
    # gradients add contributions in another order than the reference
    return {
        torch.float64: dict(rtol=1e-10, atol=1e-10),
        torch.float32: dict(rtol=1e-5, atol=1e-5),
        torch.float16: dict(rtol=1e-2, atol=1e-2),
        torch.bfloat16: dict(rtol=5e-2, atol=5e-2),
    }[dtype]


def assert_same(actual: torch.Tensor, expected: torch.Tensor, dtype=None, what: str = "", grad=False):
    dtype = dtype or actual.dtype
    t = grad_tol(dtype) if grad else tol(dtype)
    torch.testing.assert_close(
        actual.detach().cpu().to(expected.dtype), expected.detach().cpu(), **t, equal_nan=True,
        msg=lambda m: f"{what}: {m}"
    )


def assert_equal_int(actual: torch.Tensor, expected: torch.Tensor, what: str = ""):
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    a, e = actual.cpu(), expected.cpu()
    assert a.shape == e.shape, f"{what}: shape {tuple(a.shape)} != {tuple(e.shape)}"
    if not torch.equal(a, e):
        bad = (a != e).nonzero()
        i = tuple(bad[0].tolist())
        raise AssertionError(f"{what}: {len(bad)} of {a.numel()} differ, first at {i}: got {a[i].item()}, "
                             f"expected {e[i].item()}")


__all__ = [
    "EMULATED_CUDA", "NVRTC", "KERNEL_DEVICES", "EXT", "requires_ext", "backend_of", "operators", "device_or_skip",
    "FLOAT_DTYPES", "HALF_DTYPES", "distinct_features",
    "random_rois", "tol", "grad_tol", "assert_same", "assert_equal_int", "mlic",
]
