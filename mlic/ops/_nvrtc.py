"""The NVRTC path: the device code of csrc/ops/device/*.cuh (the source the compiled
extension uses) compiled at run time with NVRTC through CuPy, for CUDA tensors when the
extension was built without nvcc (and for the test namespace mlic_nvrtc always).

The host side is C++ (csrc/ops/cuda/host_side.h, the compiled CUDA back end's own): it
validates, allocates, picks the launch geometry and packs each kernel's parameters into
cuLaunchKernel's array. This module only assembles and compiles the source, looks a
kernel up by its name expression and launches it on the current torch stream (CuPy is
the optional extra ``pip install -e .[nvrtc]``).
"""
import ctypes
import functools
import glob
import os
import re
from pathlib import Path
from typing import List, Optional, Tuple

import torch

HEADERS = ("common.cuh", "roi_pool.cuh", "pool.cuh", "two_stream.cuh")
# Every kernel host_side.h launches (MLIC_KERNEL(...)); a test keeps the two lists equal.
KERNELS = ("roi_pool_forward_kernel", "roi_pool_backward_atomic_kernel", "roi_pool_backward_gather_kernel",
           "pool_forward_kernel", "pool_backward_kernel", "two_stream_forward_kernel", "two_stream_backward_kernel")
# element type as the device code names it -> (torch dtype, accumulation type, extra header)
TYPES = {
    "float": (torch.float32, "float", None),
    "double": (torch.float64, "double", None),
    "__half": (torch.float16, "float", "cuda_fp16.h"),
    "__nv_bfloat16": (torch.bfloat16, "float", "cuda_bf16.h"),
}
DTYPE_NAMES = {v[0]: k for k, v in TYPES.items()}
OPTIONS = ("-std=c++17", "--fmad=false")


def device_dir() -> Path:
    here = Path(__file__).resolve().parent.parent
    for d in (here / "_device", here.parent / "csrc" / "ops" / "device"):
        if (d / "common.cuh").exists():
            return d
    raise FileNotFoundError(
        "the device sources (common.cuh ...) were found neither in mlic/_device nor in csrc/ops/device"
    )


def _type_name(dtype) -> str:
    return dtype if isinstance(dtype, str) else DTYPE_NAMES[dtype]


def source(dtype=torch.float32) -> str:
    """One translation unit: the shared headers inlined, for NVRTC (which has no file system)."""
    extra = TYPES[_type_name(dtype)][2]
    parts = ["#define MLIC_ATOMIC_ADD(ptr, val) atomicAdd((ptr), (val))"]
    if extra:
        parts.insert(0, f"#include <{extra}>")
    d = device_dir()
    for name in HEADERS:
        text = (d / name).read_text()
        text = re.sub(r'^\s*#include\s+"[^"]+"\s*$', "", text, flags=re.M)
        parts.append(text.replace("#pragma once", ""))
    return "\n".join(parts)


def name_expressions(dtype=torch.float32) -> List[str]:
    t = _type_name(dtype)
    return [f"mlic::{k}<{t}, {TYPES[t][1]}>" for k in KERNELS]


@functools.lru_cache(maxsize=None)
def available() -> Tuple[bool, str]:
    if not torch.cuda.is_available():
        return False, "no CUDA device"
    try:
        import cupy  # noqa: F401
    except Exception as exc:  # depends on the machine
        return False, (f"the extension was built without nvcc and CuPy is not importable ({exc}); install the "
                       f"nvrtc extra (pip install -e .[nvrtc]) or rebuild with nvcc")
    return True, "cupy"


@functools.lru_cache(maxsize=None)
def _module(type_name: str, device_index: int):
    import cupy

    with cupy.cuda.Device(device_index):
        mod = cupy.RawModule(code=source(type_name), options=OPTIONS, name_expressions=name_expressions(type_name))
        mod.compile()
    return mod


@functools.lru_cache(maxsize=None)
def _function(name_expr: str, type_name: str, device_index: int):
    return _module(type_name, device_index).get_function(name_expr)


def launch(name_expr: str, type_name: str, grid, block, device_index: int, params: int) -> None:
    """Called by the C++ host side for each kernel launch: `params` is the address of
    cuLaunchKernel's parameter array, valid for the duration of the call."""
    ok, why = available()
    if not ok:
        raise RuntimeError(f"mlic: cannot run the CUDA kernels through NVRTC: {why}")
    import cupy

    fn = _function(name_expr, type_name, device_index)
    stream = torch.cuda.current_stream(device_index).cuda_stream
    with cupy.cuda.Device(device_index):
        cupy.cuda.driver.launchKernel(fn.ptr, *(int(v) for v in grid), *(int(v) for v in block), 0, stream, params, 0)


def install_launcher() -> None:
    """Hands :func:`launch` to the extension (idempotent)."""
    from mlic import _C

    _C._set_nvrtc_launcher(launch)


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


def _include_dir(libnvrtc: str) -> Optional[str]:
    """The CUDA headers (cuda_fp16.h, cuda_bf16.h) for NVRTC: beside its library (the wheel's
    include/), else the toolkit's."""
    candidates = [Path(libnvrtc).resolve().parent.parent / "include", Path("/usr/local/cuda/include")]
    if os.environ.get("CUDA_HOME"):
        candidates.insert(1, Path(os.environ["CUDA_HOME"]) / "include")
    for d in candidates:
        if (d / "cuda_fp16.h").is_file():
            return str(d)
    return None


def compile_ptx(dtype=torch.float32, arch: str = "compute_90") -> str:
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
    include = [f"-I{d}" for d in (_include_dir(path),) if d]
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
