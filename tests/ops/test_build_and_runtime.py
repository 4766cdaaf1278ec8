"""The extension's build variants and the NVRTC runtime path (no GPU needed)."""
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mlic import _ext

REPO = Path(__file__).resolve().parents[2]
needs_ext = pytest.mark.skipif(not _ext.extension_available(), reason="mlic._C is not built")


def _run(code: str, env=None, cwd=REPO):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_import_without_extension_gives_build_hint():
    # Hide the compiled module: `import mlic` must work and each op must say how to build it.
    code = """
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "mlic._C":
                raise ImportError("hidden for the test")
    sys.meta_path.insert(0, Block())
    import torch, mlic, mlic.ops as ops
    assert not mlic.extension_available()
    print(ops.backend_for("cpu"))
    for call in (lambda: ops.roi_pool(torch.zeros(1, 1, 2, 2), torch.zeros(1, 5), 1, 1),
                 lambda: ops.spp(torch.zeros(1, 1, 2, 2), 1),
                 lambda: ops.wsddn_two_stream(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2))):
        try:
            call()
        except RuntimeError as exc:
            assert "make build" in str(exc) and "mlic._C" in str(exc), exc
        else:
            raise AssertionError("no error")
    print("OK")
    """
    r = _run(code)
    assert r.returncode == 0, r.stderr
    assert "unavailable" in r.stdout and "OK" in r.stdout


def test_net_built_without_extension_is_an_error_not_the_reference():
    # Nets that need the compiled ops refuse to be built without them (no silent fallback
    # to the pure-PyTorch references); the references still run when called by name.
    code = """
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "mlic._C":
                raise ImportError("hidden for the test")
    sys.meta_path.insert(0, Block())
    import torch
    from mlic.caffe import CaffeNet
    from mlic.ops.reference import roi_pool_ref
    from prototxt_ports import NetConfig, WSDDN
    text = (
        'layer { name: "f" type: "Input" top: "f" input_param { shape { dim: 1 dim: 2 dim: 4 dim: 4 } } }'
        'layer { name: "r" type: "Input" top: "r" input_param { shape { dim: 1 dim: 6 } } }'
        'layer { name: "p" type: "ROIPooling" bottom: "f" bottom: "r" top: "p" '
        '        roi_pooling_param { pooled_h: 2 pooled_w: 2 } }')
    for build in (lambda: CaffeNet(text), lambda: WSDDN(NetConfig(num_rois=2, width=0.125, fc_dim=8))):
        try:
            build()
        except Exception as exc:
            assert "make build" in str(exc) and "mlic._C" in str(exc), repr(exc)
        else:
            raise AssertionError("built without the extension")
    out, _ = roi_pool_ref(torch.ones(1, 1, 2, 2), torch.tensor([[0, 0, 0, 1, 1, 1.0]]), 1, 1)
    assert out.item() == 1.0
    print("OK")
    """
    r = _run(code)
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout


NO_NVRTC = ("NOT CHECKED: compiling the NVRTC path's device source needs the NVRTC library (no GPU), and no "
            "libnvrtc.so was found here (the nvidia-cuda-nvrtc wheel's nvidia/*/lib, $CUDA_HOME/lib64, "
            "/usr/local/cuda/lib64)")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_runtime_source_compiles_with_nvrtc(dtype):
    # NVRTC compiles without a device: a syntax error in the run-time unit fails here rather
    # than on the first GPU machine.
    from mlic.ops import _nvrtc

    if _nvrtc._find_libnvrtc() is None:
        pytest.skip(NO_NVRTC)
    ptx = _nvrtc.compile_ptx(dtype)
    entries = [line for line in ptx.splitlines() if ".entry" in line]
    assert len(entries) == len(_nvrtc.KERNELS), entries  # one instance of each kernel the host side launches
    for kernel in _nvrtc.KERNELS:  # mangled: mlic::<name><T, A>
        assert sum(f"4mlic{len(kernel)}{kernel}I" in e for e in entries) == 1, f"{kernel} missing from the PTX"


def test_nvrtc_compile_check_reports_an_error(monkeypatch):
    from mlic.ops import _nvrtc

    if _nvrtc._find_libnvrtc() is None:
        pytest.skip(NO_NVRTC)
    good = _nvrtc.source
    monkeypatch.setattr(_nvrtc, "source", lambda dtype=torch.float32: good(dtype) + "\nnot a declaration\n")
    with pytest.raises(RuntimeError, match="(?s)NVRTC compile of the device code failed.*error"):
        _nvrtc.compile_ptx(torch.float32)


def test_runtime_source_is_the_extension_source():
    # The NVRTC unit is assembled from the very headers the compiled kernels include.
    from mlic.ops import _nvrtc

    src = _nvrtc.source(torch.float32)
    for name in _nvrtc.HEADERS:
        body = (REPO / "csrc" / "ops" / "device" / name).read_text()
        kernel_line = next((l for l in body.splitlines() if "__global__" in l), None)
        if kernel_line:
            assert kernel_line in src
    cu = (REPO / "csrc" / "ops" / "cuda" / "ops_cuda.cu").read_text()
    for name in _nvrtc.HEADERS[1:]:
        assert f'#include "../device/{name}"' in cu


@needs_ext
def test_backend_names():
    import mlic.ops as ops

    assert ops.backend_for("cpu") == "cpu"
    cuda = ops.backend_for("cuda")
    assert cuda in ("cuda-extension", "cuda-nvrtc") or cuda.startswith("unavailable")
    if _ext.extension_has_cuda():
        assert cuda == "cuda-extension"


@needs_ext
def test_a_kernel_per_dispatch_key():
    # Production ops: CPU, CUDA, Autograd and Autocast kernels; the host emulation of CUDA is
    # a separate namespace the tests select, not a switch on the production path.
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    for name in ("roi_pool", "roi_spp", "spp", "caffe_pool2d", "wsddn_two_stream"):
        for key in ("CPU", "CUDA", "Autograd", "AutocastCPU", "AutocastCUDA"):
            assert has(f"mlic::{name}", key), (name, key)
        assert has(f"mlic_emulated_cuda::{name}", "CPU") and not has(f"mlic_emulated_cuda::{name}", "CUDA")
        assert has(f"mlic_nvrtc::{name}", "CUDA") and not has(f"mlic_nvrtc::{name}", "CPU")
    from mlic import _C

    assert not any(hasattr(_C, f) for f in ("set_cuda_emulation", "cuda_emulation", "set_cpu_simd_level_cap"))


@needs_ext
def test_back_ends_are_selected_by_name():
    from mlic import ops

    x = torch.randn(1, 3, 2, dtype=torch.float64)
    assert ops.backend_for("cpu") == "cpu"
    want = ops.wsddn_two_stream(x, x)
    for backend in ("emulated-cuda", "reference"):
        for a, b in zip(ops.wsddn_two_stream(x, x, backend=backend), want):
            torch.testing.assert_close(a, b)
    assert ops.operators("emulated-cuda") is torch.ops.mlic_emulated_cuda
    with pytest.raises(ValueError, match="unknown ops back end 'cuda'"):
        ops.wsddn_two_stream(x, x, backend="cuda")


def test_nvrtc_kernel_list_is_what_the_host_side_launches():
    import re

    from mlic.ops import _nvrtc

    host = (REPO / "csrc" / "ops" / "cuda" / "host_side.h").read_text()
    launched = set(re.findall(r"MLIC_KERNEL\((\w+),", host))
    assert launched == set(_nvrtc.KERNELS)


def test_setup_explains_the_cuda_build_in_its_own_line():
    # What the build says before compiling (setup.py evaluates its extensions on import).
    env = {k: v for k, v in os.environ.items() if k not in ("MLIC_CPU_ONLY", "MLIC_SKIP_EXTENSION", "MLIC_SANITIZE")}
    r = subprocess.run([sys.executable, "setup.py", "--name"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    line = next(l for l in r.stdout.splitlines() if l.startswith("mlic: building"))
    assert "No CUDA runtime is found" not in r.stderr
    if torch.version.cuda and shutil.which("nvcc") and not torch.cuda.is_available():
        assert "CPU + CUDA" in line and "no GPU is visible here" in line and "compiled for a GPU machine" in line
    skip = subprocess.run([sys.executable, "setup.py", "--name"], cwd=REPO, capture_output=True, text=True,
                          env=dict(env, MLIC_SKIP_EXTENSION="1"), timeout=300)
    assert "not compiled by this command" in skip.stdout and "mlic: building" not in skip.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_fresh_make_test_compiles_the_extension_once(tmp_path):
    # A dry run of `make test` in a fresh copy (no virtual environment yet): pip installs the
    # package without compiling, then one build_ext compiles in place.
    for f in ("Makefile", "setup.py", "requirements.txt", "pyproject.toml"):
        shutil.copy(REPO / f, tmp_path / f)
    r = subprocess.run(["make", "-n", "test"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    installs = [l for l in lines if "pip install" in l and " -e ." in l]
    assert installs and all("MLIC_SKIP_EXTENSION=1" in l for l in installs), installs
    assert len([l for l in lines if "build_ext" in l]) == 1, lines


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="no C++ compiler")
def test_cpu_only_build_registers_runtime_cuda_path(tmp_path):
    # MLIC_CPU_ONLY=1 builds the C++ kernels alone; the ops' CUDA kernels are then the NVRTC
    # back end (the same host side), and CPU results are unchanged.
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".venv", "build", ".git", "*.so", "__pycache__",
                                                             "*.egg-info", ".pytest_cache", ".hypothesis"))
    env = dict(os.environ, MLIC_CPU_ONLY="1", MAX_JOBS=os.environ.get("MAX_JOBS", "2"))
    b = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=src, env=env,
                       capture_output=True, text=True, timeout=900)
    assert b.returncode == 0, b.stdout[-3000:] + b.stderr[-3000:]
    assert "CPU-only" in b.stdout
    code = """
    import torch, mlic, mlic.ops as ops
    from mlic import _ext
    assert _ext.extension_available() and not _ext.extension_has_cuda()
    for name in ops.OP_NAMES:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"mlic::{name}", "CUDA"), name
    f = torch.arange(24.).view(1, 2, 3, 4)
    rois = torch.tensor([[0., 0, 0, 3, 2, 1]])
    out, am = ops.operators().roi_pool(f, rois, 1, 1)
    assert out.flatten().tolist() == [11., 23.] and am.flatten().tolist() == [11, 11]
    assert torch.equal(ops.roi_pool(f, rois, 1, 1), out)
    print("OK", ops.backend_for("cuda"))
    """
    r = _run(code, env=dict(os.environ, PYTHONPATH=str(src)), cwd=src)
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout
