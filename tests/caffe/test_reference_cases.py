"""Every recorded Caffe case (SPEC section 9) through the comparison logic."""
import subprocess
import sys

import pytest

from mlic.compare import compare_case
from tests.conftest import CAFFE_REF, REPO, requires_cuda

CASES = ["roi_pool", "wsddn_head", "losses", "interp_pool_spp", "spp_only", "scale", "mini_wsddn", "mini_stage1",
         "mini_stage2", "solver", "data_layer"]


@pytest.mark.parametrize("case", CASES)
def test_reference_case(caffe_ref, case):
    res = compare_case(caffe_ref / f"{case}.npz")
    assert res.ok, res.table()
    assert len(res.rows) > 0


@pytest.mark.parametrize("case", ["wsddn_head", "mini_wsddn"])
def test_caffemodel_written_by_caffe_matches_params(caffe_ref, case):
    res = compare_case(caffe_ref / f"{case}.npz")
    rows = [r for r in res.rows if r.key.startswith("caffemodel:")]
    assert len(rows) >= 2 and all(r.ok and r.kind == "exact" for r in rows), res.table()


def test_case_with_the_caffemodel_instead_of_params(caffe_ref):
    res = compare_case(caffe_ref / "mini_wsddn.npz", caffemodel=caffe_ref / "mini_wsddn.caffemodel")
    assert res.ok, res.table()


@pytest.mark.parametrize("backend", ["reference", "emulated-cuda"])
def test_cases_with_other_ops_back_ends(caffe_ref, backend):
    """The pure-PyTorch ops and the CUDA back end run on the host give the same answers
    inside the nets."""
    for case in ("roi_pool", "interp_pool_spp", "spp_only"):
        res = compare_case(caffe_ref / f"{case}.npz", ops_backend=backend)
        assert res.ok, res.table()


def test_cli_exit_status_and_table():
    r = subprocess.run([sys.executable, str(REPO / "tools" / "compare_caffe.py"), str(CAFFE_REF / "scale.npz")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "param_diff/s2/0" in r.stdout and "PASS" in r.stdout


@pytest.mark.parametrize("case", [c for c in CASES if c != "data_layer"])
@requires_cuda
def test_reference_case_on_cuda(caffe_ref, case):
    res = compare_case(caffe_ref / f"{case}.npz", device="cuda")
    assert res.ok, res.table()
