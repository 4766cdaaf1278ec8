"""Runtime CUDA path: when mlic._C was built without CUDA, the device code of
csrc/ops/device/*.cuh (the same source the compiled extension uses) is compiled with
NVRTC through CuPy on first use and registered as the ops' CUDA implementation."""
import ctypes
import functools
import glob
import os
import re
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch

from mlic.ops import _shapes as S

THREADS = 256
HEADERS = ("common.cuh", "roi_pool.cuh", "pool.cuh", "two_stream.cuh")
KERNELS = ("roi_pool_forward_kernel", "roi_pool_backward_atomic_kernel", "roi_pool_backward_gather_kernel",
           "pool_forward_kernel", "pool_backward_kernel", "two_stream_forward_kernel", "two_stream_backward_kernel")
# dtype -> (C++ element type, accumulation type, extra header)
TYPES = {
    torch.float32: ("float", "float", None),
    torch.float64: ("double", "double", None),
    torch.float16: ("__half", "float", "cuda_fp16.h"),
    torch.bfloat16: ("__nv_bfloat16", "float", "cuda_bf16.h"),
}
GATHER_CH = 8  # MLIC_GATHER_CH in roi_pool.cuh


def device_dir() -> Path:
    here = Path(__file__).resolve().parent.parent
    for d in (here / "_device", here.parent / "csrc" / "ops" / "device"):
        if (d / "common.cuh").exists():
            return d
    raise FileNotFoundError(
        "the device sources (common.cuh ...) were found neither in mlic/_device nor in csrc/ops/device"
    )


def source(dtype: torch.dtype) -> str:
    """One translation unit: the shared headers inlined, for NVRTC (which has no file system)."""
    extra = TYPES[dtype][2]
    parts = ["#define MLIC_ATOMIC_ADD(ptr, val) atomicAdd((ptr), (val))"]
    if extra:
        parts.insert(0, f"#include <{extra}>")
    d = device_dir()
    for name in HEADERS:
        text = (d / name).read_text()
        text = re.sub(r'^\s*#include\s+"[^"]+"\s*$', "", text, flags=re.M)
        parts.append(text.replace("#pragma once", ""))
    return "\n".join(parts)


def name_expressions(dtype: torch.dtype) -> List[str]:
    t, a, _ = TYPES[dtype]
    return [f"mlic::{k}<{t}, {a}>" for k in KERNELS]


OPTIONS = ("-std=c++17", "--fmad=false")


@functools.lru_cache(maxsize=None)
def available() -> Tuple[bool, str]:
    if not torch.cuda.is_available():
        return False, "no CUDA device"
    try:
        import cupy  # noqa: F401
    except Exception as exc:  # pragma: no cover - depends on the machine
        return False, f"the extension was built without CUDA and CuPy is not importable ({exc}); rebuild with nvcc"
    return True, "cupy"


@functools.lru_cache(maxsize=None)
def _module(dtype: torch.dtype):
    import cupy

    return cupy.RawModule(code=source(dtype), options=OPTIONS, name_expressions=name_expressions(dtype))


def _kernel(name: str, dtype: torch.dtype):
    t, a, _ = TYPES[dtype]
    return _module(dtype).get_function(f"mlic::{name}<{t}, {a}>")


def _ptr(t: Optional[torch.Tensor]):
    import cupy

    if t is None or t.numel() == 0:
        return np.uint64(0)
    mem = cupy.cuda.UnownedMemory(t.data_ptr(), t.numel() * t.element_size(), t)
    return cupy.ndarray((t.numel() * t.element_size(),), dtype=np.uint8, memptr=cupy.cuda.MemoryPointer(mem, 0))


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _a(dtype, v):
    return np.float64(v) if dtype == torch.float64 else np.float32(v)


def _launch(name, dtype, grid, block, args, device):
    import cupy

    if dtype not in TYPES:
        raise ValueError(f"no CUDA kernels for dtype {dtype}")
    ok, why = available()
    if not ok:
        raise RuntimeError(f"mlic: cannot run CUDA kernels at run time: {why}")
    with cupy.cuda.Device(device.index), cupy.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream):
        _kernel(name, dtype)(grid, block, args)


def _blocks(n: int) -> Tuple[int]:
    return (max(1, min((n + THREADS - 1) // THREADS, 65536 * 8)),)


def _ints(v, device):
    return torch.tensor(v, dtype=torch.int32, device=device)


# ------------------------------------------------------------------ op bodies (CUDA)

def _roi_forward(features, rois, hs, ws, spatial_scale, score_scale, score_bias, op):
    S.check_roi_inputs(features, rois, op)
    S.check_roi_values(rois, features.shape[0], spatial_scale, op)
    feat, rois = features.contiguous(), rois.contiguous()
    n, c, h, w = feat.shape
    lv, cells = [], 0
    for a, b in zip(hs, ws):
        lv += [a, b, cells]
        cells += a * b
    k = rois.shape[0]
    out = feat.new_empty((k, c * cells))
    argmax = feat.new_empty((k, c * cells), dtype=torch.int32)
    if k:
        d = feat.dtype
        _launch("roi_pool_forward_kernel", d, _blocks(out.numel()), (THREADS,),
                (_ptr(feat), _ptr(rois), np.int32(rois.shape[1]), np.int64(k), np.int32(n), np.int32(c),
                 np.int32(h), np.int32(w), _ptr(_ints(lv, feat.device)), np.int32(len(hs)), np.int32(cells),
                 _a(d, spatial_scale), _a(d, score_scale), _a(d, score_bias), _ptr(out), _ptr(argmax)), feat.device)
    return out, argmax


def roi_spp(features, rois, levels_h, levels_w, spatial_scale=1.0, score_scale=1.0, score_bias=0.0,
            deterministic=False):
    hs, ws = S.roi_levels(list(zip(levels_h, levels_w)))
    return _roi_forward(features, rois, hs, ws, spatial_scale, score_scale, score_bias, "mlic.roi_spp")


def roi_pool(features, rois, pooled_h, pooled_w, spatial_scale=1.0, score_scale=1.0, score_bias=0.0,
             deterministic=False):
    if pooled_h <= 0 or pooled_w <= 0:
        raise ValueError(f"mlic.roi_pool: `pooled_h` and `pooled_w` must be positive, got {pooled_h}, {pooled_w}")
    out, argmax = _roi_forward(features, rois, [pooled_h], [pooled_w], spatial_scale, score_scale, score_bias,
                               "mlic.roi_pool")
    shape = (rois.shape[0], features.shape[1], pooled_h, pooled_w)
    return out.view(shape), argmax.view(shape)


def roi_spp_backward(grad, rois, argmax, levels_h, levels_w, batch, channels, height, width, spatial_scale,
                     score_scale, score_bias, deterministic):
    hs, ws = S.roi_levels(list(zip(levels_h, levels_w)))
    S.check_roi_values(rois, batch, spatial_scale, "mlic.roi_spp_backward")
    lv, cells = [], 0
    for a, b in zip(hs, ws):
        lv += [a, b, cells]
        cells += a * b
    k = rois.shape[0]
    grad = grad.reshape(k, channels * cells).contiguous()
    argmax = argmax.reshape(k, channels * cells).contiguous()
    rois = rois.contiguous()
    d = grad.dtype
    shape = (batch, channels, height, width)
    deterministic = deterministic or torch.are_deterministic_algorithms_enabled()
    lvt = _ints(lv, grad.device)
    if k == 0:
        return grad.new_zeros(shape)
    if not deterministic:
        acc = torch.zeros(shape, dtype=_acc(d), device=grad.device)
        _launch("roi_pool_backward_atomic_kernel", d, _blocks(grad.numel()), (THREADS,),
                (_ptr(grad), _ptr(rois), np.int32(rois.shape[1]), _ptr(argmax), np.int64(k), np.int32(batch),
                 np.int32(channels), np.int32(height), np.int32(width), _ptr(lvt), np.int32(len(hs)),
                 np.int32(cells), _a(d, score_scale), _a(d, score_bias), _ptr(acc)), grad.device)
    else:
        b = rois[:, 0].double().trunc().long()
        order = torch.sort(b, stable=True).indices.contiguous()
        starts = torch.zeros(batch + 1, dtype=torch.long, device=grad.device)
        starts[1:] = torch.bincount(b, minlength=batch).cumsum(0)
        acc = torch.empty(shape, dtype=_acc(d), device=grad.device)
        grid = ((height * width + THREADS - 1) // THREADS, (channels + GATHER_CH - 1) // GATHER_CH, batch)
        _launch("roi_pool_backward_gather_kernel", d, grid, (THREADS,),
                (_ptr(grad), _ptr(rois), np.int32(rois.shape[1]), _ptr(argmax), _ptr(order), _ptr(starts),
                 np.int32(channels), np.int32(height), np.int32(width), _ptr(lvt), np.int32(len(hs)),
                 np.int32(cells), _a(d, spatial_scale), _a(d, score_scale), _a(d, score_bias), _ptr(acc)),
                grad.device)
    return acc.to(d)


def _flat_params(params):
    lp, cells = [], 0
    for p in params:
        lp += list(p) + [cells]
        cells += p[6] * p[7]
    return lp, cells


def _pool_forward(x, params, mode):
    x = x.contiguous()
    n, c, h, w = x.shape
    lp, cells = _flat_params(params)
    m = S.pool_mode(mode)
    out = x.new_empty((n, c * cells))
    argmax = x.new_empty((n, c * cells) if m == 0 else (0, 0), dtype=torch.int32)
    _launch("pool_forward_kernel", x.dtype, _blocks(out.numel()), (THREADS,),
            (_ptr(x), np.int64(n), np.int32(c), np.int32(h), np.int32(w), _ptr(_ints(lp, x.device)),
             np.int32(len(params)), np.int32(cells), np.int32(m), _ptr(out), _ptr(argmax if m == 0 else None)),
            x.device)
    return out, argmax


def _pool_backward(grad, argmax, params, mode, shape):
    lp, cells = _flat_params(params)
    m = S.pool_mode(mode)
    grad = grad.reshape(shape[0], -1).contiguous()
    gin = grad.new_empty(shape)
    _launch("pool_backward_kernel", grad.dtype, _blocks(gin.numel()), (THREADS,),
            (_ptr(grad), _ptr(argmax.contiguous() if m == 0 else None), np.int64(shape[0]), np.int32(shape[1]),
             np.int32(shape[2]), np.int32(shape[3]), _ptr(_ints(lp, grad.device)), np.int32(len(params)),
             np.int32(cells), np.int32(m), _ptr(gin)), grad.device)
    return gin


def spp(x, pyramid_height, mode="max"):
    S.check_x4(x, "mlic.spp")
    return _pool_forward(x, S.spp_level_params(x.shape[2], x.shape[3], pyramid_height), mode)


def spp_backward(grad, argmax, pyramid_height, mode, batch, channels, height, width):
    return _pool_backward(grad, argmax, S.spp_level_params(height, width, pyramid_height), mode,
                          (batch, channels, height, width))


def caffe_pool2d(x, kernel_size, stride, padding, mode="max"):
    S.check_x4(x, "mlic.caffe_pool2d")
    params = S.pool2d_level_params(x.shape[2], x.shape[3], kernel_size, stride, padding)
    out, argmax = _pool_forward(x, params, mode)
    shape = (x.shape[0], x.shape[1], params[0][6], params[0][7])
    return out.view(shape), argmax.view(shape) if S.pool_mode(mode) == 0 else argmax


def caffe_pool2d_backward(grad, argmax, kernel_size, stride, padding, mode, batch, channels, height, width):
    params = S.pool2d_level_params(height, width, kernel_size, stride, padding)
    return _pool_backward(grad, argmax, params, mode, (batch, channels, height, width))


def wsddn_two_stream(cls_logits, det_logits):
    S.check_two_stream(cls_logits, det_logits, "mlic.wsddn_two_stream")
    cls, det = cls_logits.contiguous(), det_logits.contiguous()
    n, r, c = cls.shape
    image = cls.new_empty((n, c))
    region, pc, pd = torch.empty_like(cls), torch.empty_like(cls), torch.empty_like(cls)
    if n:
        ws = torch.empty((n, 2 * r + 2 * c), dtype=_acc(cls.dtype), device=cls.device)
        _launch("two_stream_forward_kernel", cls.dtype, (n,), (512,),
                (_ptr(cls), _ptr(det), np.int32(r), np.int32(c), _ptr(ws), _ptr(image), _ptr(region), _ptr(pc),
                 _ptr(pd)), cls.device)
    return image, region, pc, pd


def wsddn_two_stream_backward(grad_image, grad_region, cls_prob, det_prob):
    S.check_two_stream(cls_prob, det_prob, "mlic.wsddn_two_stream_backward")
    pc, pd = cls_prob.contiguous(), det_prob.contiguous()
    n, r, c = pc.shape
    gi = grad_image.contiguous() if grad_image is not None else None
    gr = grad_region.contiguous() if grad_region is not None else None
    d_cls, d_det = torch.empty_like(pc), torch.empty_like(pc)
    if n:
        ws = torch.empty((n, r + c), dtype=_acc(pc.dtype), device=pc.device)
        _launch("two_stream_backward_kernel", pc.dtype, (n,), (512,),
                (_ptr(gi), _ptr(gr), _ptr(pc), _ptr(pd), np.int32(r), np.int32(c), _ptr(ws), _ptr(d_cls),
                 _ptr(d_det)), pc.device)
    return d_cls, d_det


_IMPLS = {
    "roi_pool": roi_pool, "roi_spp": roi_spp, "roi_spp_backward": roi_spp_backward, "spp": spp,
    "spp_backward": spp_backward, "caffe_pool2d": caffe_pool2d, "caffe_pool2d_backward": caffe_pool2d_backward,
    "wsddn_two_stream": wsddn_two_stream, "wsddn_two_stream_backward": wsddn_two_stream_backward,
}
_registered = False


def register_cuda_impls():
    """Makes the NVRTC bodies the CUDA kernels of the mlic ops (extension built without CUDA)."""
    global _registered
    if _registered:
        return
    for name, fn in _IMPLS.items():
        torch.library.impl(f"mlic::{name}", "CUDA")(fn)
    _registered = True


# ------------------------------------------------------------------ compile check without a GPU

def _find_libnvrtc() -> Optional[str]:
    names = []
    try:
        import nvidia  # the CUDA wheels that torch depends on

        for base in nvidia.__path__:
            names += glob.glob(os.path.join(base, "**", "libnvrtc.so*"), recursive=True)
    except ImportError:
        pass
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home:
            names += glob.glob(os.path.join(home, "lib64", "libnvrtc.so*"))
    names = [n for n in names if "builtins" not in n and "alt" not in os.path.basename(n)]
    return sorted(names)[0] if names else None


def compile_ptx(dtype: torch.dtype = torch.float32, arch: str = "compute_90") -> str:
    """Compiles the runtime source with the NVRTC library directly (no GPU, no CuPy needed)
    and returns the PTX; raises RuntimeError with NVRTC's log on failure."""
    path = _find_libnvrtc()
    if path is None:
        raise FileNotFoundError("libnvrtc not found (install the nvidia-cuda-nvrtc wheel or a CUDA toolkit)")
    nv = ctypes.CDLL(path)
    prog = ctypes.c_void_p()
    src = source(dtype).encode()

    def check(status, what):
        if status != 0:
            raise RuntimeError(f"NVRTC {what} failed with status {status}")

    check(nv.nvrtcCreateProgram(ctypes.byref(prog), src, b"mlic.cu", 0, None, None), "create")
    for expr in name_expressions(dtype):
        check(nv.nvrtcAddNameExpression(prog, expr.encode()), "add name")
    include = []
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home and os.path.isdir(os.path.join(home, "include")):
            include.append(f"-I{os.path.join(home, 'include')}")
            break
    opts = [o.encode() for o in OPTIONS + (f"--gpu-architecture={arch}",) + tuple(include)]
    arr = (ctypes.c_char_p * len(opts))(*opts)
    status = nv.nvrtcCompileProgram(prog, len(opts), arr)
    if status != 0:
        size = ctypes.c_size_t()
        nv.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        nv.nvrtcGetProgramLog(prog, log)
        raise RuntimeError(f"NVRTC compile of the device code failed:\n{log.value.decode(errors='replace')}")
    size = ctypes.c_size_t()
    check(nv.nvrtcGetPTXSize(prog, ctypes.byref(size)), "ptx size")
    ptx = ctypes.create_string_buffer(size.value)
    check(nv.nvrtcGetPTX(prog, ptx), "ptx")
    nv.nvrtcDestroyProgram(ctypes.byref(prog))
    return ptx.value.decode()
