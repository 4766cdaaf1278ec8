"""Builds mlic and its extension mlic._C.

C++ CPU kernels are always built. The CUDA kernels are built whenever nvcc and a
CUDA-enabled torch are present, also on a machine without a GPU; without them, CUDA
tensors run the same device code compiled at run time by NVRTC (`pip install -e .[nvrtc]`
brings CuPy for that). Environment:
  MLIC_CPU_ONLY=1        build the CPU kernels only
  MLIC_SKIP_EXTENSION=1  install the Python package without compiling (the Makefile then
                         compiles once, in place, with `setup.py build_ext --inplace`)
  MLIC_SANITIZE=address  an AddressSanitizer build (`make sanitize`)
  TORCH_CUDA_ARCH_LIST   CUDA targets (default here: the visible GPUs, else "9.0+PTX")
  MAX_JOBS               parallel compile jobs for ninja
"""
import contextlib
import glob
import io
import os
import shutil
import sys
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
DEVICE_HEADERS = sorted(glob.glob("csrc/ops/device/*.cuh"))


def _resolve_cuda_home():
    """The nvcc on PATH may be a wrapper script outside the toolkit; find the real toolkit
    so torch links against its libcudart."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and (Path(home) / "bin" / "nvcc").exists() and (Path(home) / "include" / "cuda.h").exists():
            return home
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = Path(os.path.realpath(nvcc)).parent.parent
        candidates.append(real)
        try:  # a wrapper script naming the real compiler
            text = Path(nvcc).read_text(errors="ignore")[:4000]
            for tok in text.replace('"', " ").replace("'", " ").split():
                if tok.endswith("/bin/nvcc"):
                    candidates.append(Path(tok).parent.parent)
        except OSError:
            pass
    candidates += [Path("/usr/local/cuda")] + sorted(Path("/usr/local").glob("cuda-*"), reverse=True)
    for c in candidates:
        if (c / "bin" / "nvcc").exists() and (c / "include" / "cuda.h").exists() and (
            (c / "lib64").exists() or (c / "lib").exists()
        ):
            return str(c)
    return None


def _want_cuda(torch):
    if _flag("MLIC_CPU_ONLY"):
        return False, "MLIC_CPU_ONLY is set"
    if os.environ.get("MLIC_SANITIZE"):
        return False, "MLIC_SANITIZE is set (nvcc objects are not instrumented)"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} has no CUDA support"
    home = _resolve_cuda_home()
    if home is None:
        return False, "no CUDA toolkit (nvcc) found"
    os.environ["CUDA_HOME"] = home
    return True, home


def _flag(name):
    return os.environ.get(name, "0") not in ("", "0", "false", "False")


def _extensions():
    if _flag("MLIC_SKIP_EXTENSION"):
        print("mlic: MLIC_SKIP_EXTENSION is set: the extension mlic._C is not compiled by this command")
        return [], {}
    try:
        import torch
        # torch prints "No CUDA runtime is found" on import when no GPU is visible; said below in our words.
        with contextlib.redirect_stderr(io.StringIO()) as said:
            from torch.utils import cpp_extension
    except ImportError:  # metadata-only invocations
        return [], {}
    other = "\n".join(line for line in said.getvalue().splitlines() if "No CUDA runtime is found" not in line)
    if other:
        print(other, file=sys.stderr)
    with_cuda, why = _want_cuda(torch)
    if with_cuda:
        # cpp_extension reads CUDA_HOME at import time: point it at the resolved toolkit.
        cpp_extension.CUDA_HOME = os.environ["CUDA_HOME"]
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0+PTX"
        where = (f"with the CUDA toolkit at {why} for {os.environ.get('TORCH_CUDA_ARCH_LIST', 'the visible GPUs')}"
                 + ("" if torch.cuda.is_available() else
                    "; no GPU is visible here, so the CUDA kernels are compiled for a GPU machine later"))
        print(f"mlic: building CPU + CUDA kernels ({where})")
    else:
        print(f"mlic: building CPU-only kernels ({why}; CUDA tensors will use NVRTC through CuPy)")
    sources = ["csrc/mlic.cpp", "csrc/ops/frontend.cpp", "csrc/ops/cpu/ops_cpu.cpp",
               "csrc/ops/emulation/ops_emulated.cpp", "csrc/ops/nvrtc/ops_nvrtc.cpp"]
    # No FMA contraction (nvcc: --fmad=false): the host-run CUDA kernels round as the GPU's.
    cxx = ["-O3", "-fopenmp", "-ffp-contract=off"]
    link = ["-fopenmp"]
    if os.environ.get("MLIC_SANITIZE"):
        san = os.environ["MLIC_SANITIZE"]
        if san != "address":
            raise SystemExit(f"MLIC_SANITIZE must be 'address', got {san!r}")
        cxx = ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address", "-fopenmp", "-ffp-contract=off"]
        link = ["-fopenmp", "-fsanitize=address"]
        print("mlic: AddressSanitizer build (run Python with LD_PRELOAD=$(gcc -print-file-name=libasan.so)"
              ":$(gcc -print-file-name=libstdc++.so), as `make sanitize` does)")
    define = []
    nvcc = ["-O3", "--fmad=false", "--expt-relaxed-constexpr"]
    if with_cuda:
        sources.append("csrc/ops/cuda/ops_cuda.cu")
        define.append(("MLIC_WITH_CUDA", None))
        ext_cls = cpp_extension.CUDAExtension
        kwargs = {"extra_compile_args": {"cxx": cxx, "nvcc": nvcc}}
    else:
        ext_cls = cpp_extension.CppExtension
        kwargs = {"extra_compile_args": {"cxx": cxx}}
    ext = ext_cls(
        "mlic._C",
        sources,
        include_dirs=[str(ROOT / "csrc")],
        define_macros=define,
        extra_link_args=link,
        **kwargs,
    )
    build_ext = cpp_extension.BuildExtension.with_options(use_ninja=True)
    return [ext], {"build_ext": build_ext}


class BuildPyWithDeviceCode(build_py):
    """Ships the shared device headers inside the package for the NVRTC runtime path."""

    def run(self):
        super().run()
        target = Path(self.build_lib) / "mlic" / "_device"
        target.mkdir(parents=True, exist_ok=True)
        for h in DEVICE_HEADERS:
            shutil.copy(h, target / Path(h).name)


ext_modules, cmdclass = _extensions()
cmdclass["build_py"] = BuildPyWithDeviceCode

setup(
    name="mlic",
    version="0.1.0",
    description="Multi-label image classification via knowledge distillation from weakly-supervised detection "
    "(a PyTorch reproduction faithful to the authors' Caffe code)",
    packages=find_packages(include=["mlic", "mlic.*", "prototxt_ports", "prototxt_ports.*"]),
    python_requires=">=3.10",
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    extras_require={"nvrtc": ["cupy-cuda13x"]},
)
