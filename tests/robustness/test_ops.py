"""Op-level robustness: each bad input to the ops, on every back end, with the error type
and message fragment it must produce (or the safe result it must give). The cases run in
child processes, so one that crashes (sizes whose product overflows int32 and argmax
values outside the input are such inputs) fails its own test instead of the run. `make sanitize`
runs this file against an AddressSanitizer build of the extension.

A case is Python source evaluated with `ops` (the operators of the back end's namespace,
torch.ops.mlic or torch.ops.mlic_emulated_cuda), `dev` (its device) and `torch` in scope.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mlic import _ext

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not _ext.extension_available(), reason="mlic._C is not built")

# Back ends: name -> (op namespace, device). CUDA ones only where a GPU is present.
BACKENDS = {"cpu": ("mlic", "cpu"), "emulated-cuda": ("mlic_emulated_cuda", "cpu")}
if torch.cuda.is_available():
    BACKENDS.update({"cuda": ("mlic", "cuda"), "nvrtc": ("mlic_nvrtc", "cuda")})
DEVICE_BACKENDS = [b for b in BACKENDS if b != "cpu"]  # the CUDA back end's ways, no host value checks

F = "torch.randn(2, 3, 6, 6, device=dev)"
R = "torch.tensor([[1, 0, 0, 5, 5, 1.0]], device=dev)"
X = "torch.randn(2, 3, 7, 9, device=dev)"
L = "torch.randn(2, 5, 4, device=dev)"


def _bad_roi(col, value):
    return f"ops.roi_pool({F}, {R}.index_fill_(1, torch.tensor([{col}], device=dev), {value}), 2, 2, 1.0, 1.0, 0.0, False)"


# (id, source, {backend: expectation}); an expectation is ("raises", type name, fragment),
# or ("ok", check source evaluated with `out` bound to the result), for backends not
# listed: the "*" entry.
CASES = [
    # sizes whose products overflow int32 (roi_pool segfaulted; roi_spp returned a wrong shape)
    ("roi_pool_65536x65536", "ops.roi_pool(torch.randn(1, 1, 2, 2, device=dev), torch.tensor([[0, 0, 0, 1, 1, 1.0]], device=dev), 65536, 65536, 1.0, 1.0, 0.0, False)",
     {"*": ("raises", "ValueError", "more than the kernels' limit")}),
    ("roi_spp_level_65536x65537", "ops.roi_spp(torch.randn(1, 1, 2, 2, device=dev), torch.tensor([[0, 0, 0, 1, 1, 1.0]], device=dev), [65536], [65537], 1.0, 1.0, 0.0, False)",
     {"*": ("raises", "ValueError", "more than the kernels' limit")}),
    ("roi_spp_levels_sum_overflow", "ops.roi_spp(torch.randn(1, 1, 2, 2, device=dev), torch.tensor([[0, 0, 0, 1, 1, 1.0]], device=dev), [40000, 40000], [40000, 40000], 1.0, 1.0, 0.0, False)",
     {"*": ("raises", "ValueError", "output cells per RoI")}),
    ("roi_pool_channels_times_cells", "ops.roi_pool(torch.zeros(1, 1, 1, 1, device=dev).expand(1, 70000, 1, 1), torch.tensor([[0, 0, 0, 1, 1, 1.0]], device=dev), 200, 200, 1.0, 1.0, 0.0, False)",
     {"*": ("raises", "ValueError", "output cells per RoI")}),
    ("roi_pool_plane_overflow", "ops.roi_pool(torch.zeros(1, 1, 1, 1, device=dev).expand(1, 1, 65536, 65536), torch.tensor([[0, 0, 0, 1, 1, 1.0]], device=dev), 2, 2, 1.0, 1.0, 0.0, False)",
     {"*": ("raises", "ValueError", "H*W")}),
    ("roi_pool_too_many_levels", "ops.roi_spp(" + F + ", " + R + ", [1] * 17, [1] * 17, 1.0, 1.0, 0.0, False)",
     {"*": ("raises", "ValueError", "at most 16 levels")}),
    ("pool2d_huge_kernel", "ops.caffe_pool2d(" + X + ", [2**31, 2], [1, 1], [0, 0], 'max')",
     {"*": ("raises", "ValueError", "below 2^29")}),
    ("pool2d_window_overflow", "ops.caffe_pool2d(" + X + ", [2**20, 2**20], [1, 1], [0, 0], 'ave')",
     {"*": ("raises", "ValueError", "kh*kw")}),
    ("pool2d_plane_overflow", "ops.caffe_pool2d(torch.zeros(1, 1, 1, 1, device=dev).expand(1, 1, 65536, 65536), [2, 2], [2, 2], [0, 0], 'max')",
     {"*": ("raises", "ValueError", "H*W")}),
    ("spp_channels_times_cells", "ops.spp(torch.zeros(1, 1, 1, 1, device=dev).expand(1, 2**31, 1, 1), 1, 'max')",
     {"*": ("raises", "ValueError", "output cells per image")}),
    ("spp_pyramid_17", "ops.spp(" + X + ", 17, 'max')", {"*": ("raises", "ValueError", "pyramid_height")}),
    ("two_stream_rc_overflow", "ops.wsddn_two_stream(torch.zeros(1, 1, 1, device=dev).expand(1, 50000, 50000), torch.zeros(1, 1, 1, device=dev).expand(1, 50000, 50000))",
     {"*": ("raises", "ValueError", "R*C")}),
    # the backward ops: an argmax outside the input must never be written through
    ("roi_spp_backward_argmax_out_of_range", "ops.roi_spp_backward(torch.ones(1, 12, device=dev), " + R + ", torch.full((1, 12), 10**6, dtype=torch.int32, device=dev), [2], [2], 2, 3, 6, 6, 1.0, 1.0, 0.0, False)",
     {"cpu": ("raises", "ValueError", "argmax` holds an index outside"), "*": ("ok", "float(out.abs().sum()) == 0")}),
    ("roi_spp_backward_argmax_out_of_range_deterministic", "ops.roi_spp_backward(torch.ones(1, 12, device=dev), " + R + ", torch.full((1, 12), 10**6, dtype=torch.int32, device=dev), [2], [2], 2, 3, 6, 6, 1.0, 1.0, 0.0, True)",
     {"cpu": ("raises", "ValueError", "argmax` holds an index outside"), "*": ("ok", "float(out.abs().sum()) == 0")}),
    ("roi_spp_backward_argmax_wrong_dtype", "ops.roi_spp_backward(torch.ones(1, 12, device=dev), " + R + ", torch.zeros(1, 12, dtype=torch.int64, device=dev), [2], [2], 2, 3, 6, 6, 1.0, 1.0, 0.0, False)",
     {"*": ("raises", "ValueError", "`argmax` must be the int32 argmax")}),
    ("roi_spp_backward_argmax_too_short", "ops.roi_spp_backward(torch.ones(1, 12, device=dev), " + R + ", torch.zeros(5, dtype=torch.int32, device=dev), [2], [2], 2, 3, 6, 6, 1.0, 1.0, 0.0, False)",
     {"*": ("raises", "ValueError", "`argmax` must be the int32 argmax")}),
    ("roi_spp_backward_grad_wrong_size", "ops.roi_spp_backward(torch.ones(1, 11, device=dev), " + R + ", torch.zeros(1, 12, dtype=torch.int32, device=dev), [2], [2], 2, 3, 6, 6, 1.0, 1.0, 0.0, False)",
     {"*": ("raises", "ValueError", "`grad` must have K*C*S = 12")}),
    ("roi_spp_backward_bad_shape_args", "ops.roi_spp_backward(torch.ones(1, 12, device=dev), " + R + ", torch.zeros(1, 12, dtype=torch.int32, device=dev), [2], [2], 2, 3, -6, 6, 1.0, 1.0, 0.0, False)",
     {"*": ("raises", "ValueError", "must be positive")}),
    ("roi_spp_backward_batch_out_of_range", "ops.roi_spp_backward(torch.ones(1, 12, device=dev), torch.tensor([[5, 0, 0, 5, 5, 1.0]], device=dev), torch.zeros(1, 12, dtype=torch.int32, device=dev), [2], [2], 2, 3, 6, 6, 1.0, 1.0, 0.0, False)",
     {"*": ("ok", "float(out.abs().sum()) == 0")}),
    ("spp_backward_argmax_out_of_range", "ops.spp_backward(torch.ones(2, 3 * 5, device=dev), torch.full((2, 15), -7, dtype=torch.int32, device=dev).index_fill_(1, torch.tensor([3], device=dev), 2**30), 2, 'max', 2, 3, 7, 9)",
     {"cpu": ("raises", "ValueError", "argmax` holds an index outside"), "*": ("ok", "float(out.abs().sum()) == 0")}),
    ("caffe_pool2d_backward_argmax_out_of_range", "ops.caffe_pool2d_backward(torch.ones(2, 3, 4, 5, device=dev), torch.full((2, 3, 4, 5), 63, dtype=torch.int32, device=dev), [3, 2], [2, 2], [1, 0], 'max', 2, 3, 7, 9)",
     {"cpu": ("raises", "ValueError", "argmax` holds an index outside"), "*": ("ok", "float(out.abs().sum()) == 0")}),
    ("caffe_pool2d_backward_grad_wrong_size", "ops.caffe_pool2d_backward(torch.ones(2, 3, 4, 4, device=dev), torch.zeros(2, 3, 4, 4, dtype=torch.int32, device=dev), [3, 2], [2, 2], [1, 0], 'max', 2, 3, 7, 9)",
     {"*": ("raises", "ValueError", "`grad` must have N*C*S")}),
    ("two_stream_backward_grad_shape", "ops.wsddn_two_stream_backward(torch.ones(2, 3, device=dev), None, torch.rand(2, 5, 4, device=dev), torch.rand(2, 5, 4, device=dev))",
     {"*": ("raises", "ValueError", "`grad_image` must have shape [2, 4]")}),
    # RoI values: checked on the CPU; never read on the host by the CUDA back end (safe results)
    ("roi_batch_minus_1", _bad_roi(0, -1.0),
     {"cpu": ("raises", "ValueError", "batch index (column 0) -1"), "*": ("ok", "bool((out[0] == 0).all()) and bool((out[1] == -1).all())")}),
    ("roi_batch_N", _bad_roi(0, 2.0),
     {"cpu": ("raises", "ValueError", "out of range for features with N=2"), "*": ("ok", "bool((out[0] == 0).all())")}),
    ("roi_batch_nan", _bad_roi(0, "float('nan')"),
     {"cpu": ("raises", "ValueError", "NaN or infinite"), "*": ("ok", "bool((out[0] == 0).all())")}),
    ("roi_batch_1e30", _bad_roi(0, 1e30),
     {"cpu": ("raises", "ValueError", "batch index"), "*": ("ok", "bool((out[0] == 0).all())")}),
    ("roi_x1_nan", _bad_roi(1, "float('nan')"),
     {"cpu": ("raises", "ValueError", "NaN or infinite"), "*": ("ok", "bool(((out[1] >= -1) & (out[1] < 36)).all())")}),
    ("roi_x2_minus_inf", _bad_roi(3, "float('-inf')"),
     {"cpu": ("raises", "ValueError", "NaN or infinite"), "*": ("ok", "bool(((out[1] >= -1) & (out[1] < 36)).all())")}),
    ("roi_y1_1e12", _bad_roi(2, 1e12),
     {"cpu": ("raises", "ValueError", "below 2^29"), "*": ("ok", "bool((out[1] == -1).all())")}),
    ("roi_y2_minus_1e12", _bad_roi(4, -1e12),
     {"cpu": ("raises", "ValueError", "below 2^29"), "*": ("ok", "bool(((out[1] >= -1) & (out[1] < 36)).all())")}),
    ("roi_score_nan", _bad_roi(5, "float('nan')"),
     {"cpu": ("raises", "ValueError", "NaN or infinite"), "*": ("ok", "bool(((out[1] >= -1) & (out[1] < 36)).all())")}),
    # shapes, dtypes and arguments
    ("roi_features_3d", "ops.roi_pool(torch.randn(3, 6, 6, device=dev), " + R + ", 2, 2, 1.0, 1.0, 0.0, False)",
     {"*": ("raises", "ValueError", "`features` must be 4-D")}),
    ("roi_features_int", "ops.roi_pool(torch.zeros(2, 3, 6, 6, dtype=torch.int64, device=dev), " + R + ", 2, 2, 1.0, 1.0, 0.0, False)",
     {"*": ("raises", "ValueError", "floating-point")}),
    ("roi_features_empty", "ops.roi_pool(torch.zeros(2, 0, 6, 6, device=dev), " + R + ", 2, 2, 1.0, 1.0, 0.0, False)",
     {"*": ("raises", "ValueError", "empty dimension")}),
    ("roi_rois_4_columns", "ops.roi_pool(" + F + ", " + R + "[:, :4], 2, 2, 1.0, 1.0, 0.0, False)",
     {"*": ("raises", "ValueError", "`rois` must be 2-D [K, 6]")}),
    ("roi_rois_float64", "ops.roi_pool(" + F + ", " + R + ".double(), 2, 2, 1.0, 1.0, 0.0, False)",
     {"*": ("raises", "ValueError", "same dtype")}),
    ("roi_pooled_zero", "ops.roi_pool(" + F + ", " + R + ", 0, 2, 1.0, 1.0, 0.0, False)",
     {"*": ("raises", "ValueError", "`pooled_h` must be positive")}),
    ("roi_spatial_scale_nan", "ops.roi_pool(" + F + ", " + R + ", 2, 2, float('nan'), 1.0, 0.0, False)",
     {"*": ("raises", "ValueError", "spatial_scale")}),
    ("roi_spatial_scale_negative", "ops.roi_pool(" + F + ", " + R + ", 2, 2, -0.5, 1.0, 0.0, False)",
     {"*": ("raises", "ValueError", "spatial_scale")}),
    ("roi_score_scale_inf", "ops.roi_pool(" + F + ", " + R + ", 2, 2, 1.0, float('inf'), 0.0, False)",
     {"*": ("raises", "ValueError", "score_scale")}),
    ("roi_spp_levels_mismatch", "ops.roi_spp(" + F + ", " + R + ", [1, 2], [1], 1.0, 1.0, 0.0, False)",
     {"*": ("raises", "ValueError", "equal length")}),
    ("roi_spp_levels_empty", "ops.roi_spp(" + F + ", " + R + ", [], [], 1.0, 1.0, 0.0, False)",
     {"*": ("raises", "ValueError", "non-empty")}),
    ("roi_no_rois", "ops.roi_pool(" + F + ", torch.zeros(0, 6, device=dev), 2, 2, 1.0, 1.0, 0.0, False)",
     {"*": ("ok", "tuple(out[0].shape) == (0, 3, 2, 2)")}),
    ("pool2d_pad_not_below_kernel", "ops.caffe_pool2d(" + X + ", [2, 2], [1, 1], [2, 0], 'max')",
     {"*": ("raises", "ValueError", "`padding` must be in [0, kernel_size)")}),
    ("pool2d_stride_zero", "ops.caffe_pool2d(" + X + ", [2, 2], [0, 1], [0, 0], 'max')",
     {"*": ("raises", "ValueError", "`stride` must be positive")}),
    ("pool2d_mode_min", "ops.caffe_pool2d(" + X + ", [2, 2], [1, 1], [0, 0], 'min')",
     {"*": ("raises", "ValueError", "`mode` must be")}),
    ("pool2d_input_smaller_than_kernel", "ops.caffe_pool2d(" + X + ", [8, 10], [2, 2], [0, 0], 'max')",
     {"*": ("ok", "tuple(out[0].shape) == (2, 3, 1, 1)")}),
    ("pool2d_x_2d", "ops.caffe_pool2d(torch.randn(7, 9, device=dev), [2, 2], [1, 1], [0, 0], 'max')",
     {"*": ("raises", "ValueError", "`x` must be 4-D")}),
    ("spp_refused_level", "ops.spp(torch.randn(1, 1, 8, 19, device=dev), 4, 'max')",
     {"*": ("raises", "ValueError", "Caffe's SPP refuses this input")}),
    ("spp_pyramid_zero", "ops.spp(" + X + ", 0, 'max')", {"*": ("raises", "ValueError", "pyramid_height")}),
    ("two_stream_shapes_differ", "ops.wsddn_two_stream(" + L + ", torch.randn(2, 5, 3, device=dev))",
     {"*": ("raises", "ValueError", "must have the same shape")}),
    ("two_stream_no_regions", "ops.wsddn_two_stream(torch.randn(2, 0, 4, device=dev), torch.randn(2, 0, 4, device=dev))",
     {"*": ("raises", "ValueError", "at least one region")}),
    ("two_stream_int", "ops.wsddn_two_stream(torch.zeros(2, 5, 4, dtype=torch.int32, device=dev), torch.zeros(2, 5, 4, dtype=torch.int32, device=dev))",
     {"*": ("raises", "ValueError", "floating-point")}),
    ("two_stream_nan_stays_in_its_row_and_column", "ops.wsddn_two_stream(torch.zeros(1, 3, 2, device=dev).index_fill_(1, torch.tensor([1], device=dev), float('nan')), torch.zeros(1, 3, 2, device=dev))",
     {"*": ("ok", "bool(out[1][0, 1].isnan().all()) and bool(out[1][0, 0].isfinite().all())")}),
]
IDS = [c[0] for c in CASES]
assert len(set(IDS)) == len(IDS)


def _expectation(case, backend):
    table = case[2]
    return table.get(backend, table["*"])


RUNNER = r"""
import json, sys, traceback
import torch
import mlic.ops  # registers autograd and fake kernels
ns, dev, cases = sys.argv[1], sys.argv[2], json.loads(sys.stdin.read())
ops = getattr(torch.ops, ns)
for cid, src, check in cases:
    print("START", cid, flush=True)
    try:
        out = eval(src)  # a tensor, or a tuple of them
        if dev == "cuda":
            torch.cuda.synchronize()
        res = {"kind": "ok", "check": bool(eval(check)) if check else None}
    except Exception as exc:
        res = {"kind": "raised", "type": type(exc).__name__, "message": str(exc)[:2000]}
    print("RESULT", json.dumps([cid, res]), flush=True)
"""


def _run_cases(backend):
    """Results of every case on `backend`: {id: result}; a case whose process died is
    recorded as crashed and the rest run in a new process."""
    ns, dev = BACKENDS[backend]
    todo = [(c[0], c[1], _expectation(c, backend)[1] if _expectation(c, backend)[0] == "ok" else "") for c in CASES]
    results = {}
    while todo:
        p = subprocess.run([sys.executable, "-c", RUNNER, ns, dev], input=json.dumps(todo), capture_output=True,
                           text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=900)
        started = None
        for line in p.stdout.splitlines():
            if line.startswith("START "):
                started = line.split(" ", 1)[1]
            elif line.startswith("RESULT "):
                cid, res = json.loads(line.split(" ", 1)[1])
                results[cid] = res
                started = None
        if started is None and p.returncode != 0 and len(results) < len(CASES):
            raise AssertionError(f"the case runner failed before any case: {p.stderr[-3000:]}")
        if started is not None:
            results[started] = {"kind": "crashed", "returncode": p.returncode, "stderr": p.stderr[-3000:]}
        todo = [t for t in todo if t[0] not in results]
    return results


@pytest.fixture(scope="module")
def results():
    return {}


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_bad_op_input(case, backend, results):
    if backend not in results:
        results[backend] = _run_cases(backend)
    got = results[backend][case[0]]
    want = _expectation(case, backend)
    assert got["kind"] != "crashed", f"the process crashed (status {got['returncode']}): {got['stderr']}"
    if want[0] == "raises":
        assert got["kind"] == "raised", f"no error; expected {want[1]} containing {want[2]!r}"
        assert got["type"] == want[1] and want[2] in got["message"], got
    else:
        assert got["kind"] == "ok", got
        assert got["check"], f"result check failed: {want[1]}"


@pytest.mark.parametrize("at_load", [None, "1"])
def test_debug_switch_is_read_once_when_the_extension_loads(at_load):
    # MLIC_CHECK_ROI_VALUES=1 in the environment when mlic._C is loaded: the CUDA back ends
    # check RoI values on the host too (a sync). It is read then, once: changing it later
    # changes nothing.
    code = textwrap.dedent(f"""
        import os, torch
        import mlic.ops
        ops, dev = torch.ops.mlic_emulated_cuda, "cpu"

        def call():
            try:
                {_bad_roi(0, 2.0)}
            except ValueError as exc:
                return "raised " + str(exc)
            return "no error"

        print("at load:", call())
        os.environ["MLIC_CHECK_ROI_VALUES"] = "0" if os.environ.get("MLIC_CHECK_ROI_VALUES") else "1"
        print("changed:", call())
    """)
    env = {k: v for k, v in os.environ.items() if k != "MLIC_CHECK_ROI_VALUES"}
    if at_load:
        env["MLIC_CHECK_ROI_VALUES"] = at_load
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                       env=dict(env, PYTHONPATH=str(REPO)), timeout=300)
    lines = [l for l in p.stdout.splitlines() if l.startswith(("at load:", "changed:"))]
    assert len(lines) == 2, p.stdout + p.stderr
    for line in lines:
        if at_load:
            assert "raised" in line and "out of range for features with N=2" in line, line
        else:
            assert line.endswith("no error"), line
