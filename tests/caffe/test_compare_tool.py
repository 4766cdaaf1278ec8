"""The comparison tool on cases made here (values computed by hand with numpy), so it is
covered without the recorded Caffe data."""
import json
import subprocess
import sys

import numpy as np

from mlic.cli.compare import main
from mlic.compare import compare_arrays, compare_case
from tests.conftest import REPO

PROTO = """force_backward: true
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 3 dim: 4 } } }
layer { name: "t" type: "Input" top: "t" input_param { shape { dim: 3 dim: 2 } } }
layer { name: "lr" type: "Input" top: "lr" input_param { shape { dim: 1 dim: 10 } } }
layer { name: "roi" type: "WsdRoigenSingleScale" bottom: "lr" top: "roi" roi_pooling_param { single_scale: 1 origin_scale: 3 } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip" inner_product_param { num_output: 2 } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "t" top: "loss" loss_weight: 2 }
"""


def _case(rng):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    t = rng.standard_normal((3, 2)).astype(np.float32)
    lr = (rng.random((1, 10)) * 30).astype(np.float32)
    w = rng.standard_normal((2, 4)).astype(np.float32)
    b = rng.standard_normal(2).astype(np.float32)
    ip = x.astype(np.float64) @ w.T + b
    d = ip - t
    g_ip = 2 * d / 3
    roi = np.concatenate([np.zeros((2, 1)), lr.reshape(2, 5)], 1)
    roi[:, 1:5] = np.floor(np.float32(1) * lr.reshape(2, 5)[:, :4] / np.float32(3))
    return {
        "prototxt": np.array(PROTO), "meta": np.array(json.dumps({"phase": "TEST", "backward": True})),
        "input/x": x, "input/t": t, "input/lr": lr,
        "param/ip/0": w, "param/ip/1": b,
        "blob/x": x, "blob/roi": roi.astype(np.float32), "blob/ip": ip.astype(np.float32),
        "blob/loss": np.array((d**2).sum() / 6, np.float32),
        "diff/ip": g_ip.astype(np.float32), "diff/x": (g_ip @ w).astype(np.float32),
        "diff/t": (-g_ip).astype(np.float32), "diff/loss": np.array(2.0, np.float32),
        "param_diff/ip/0": (g_ip.T @ x).astype(np.float32), "param_diff/ip/1": g_ip.sum(0).astype(np.float32),
    }


def test_synthetic_case_passes_and_kinds(tmp_path):
    path = tmp_path / "case.npz"
    np.savez(path, **_case(np.random.default_rng(0)))
    res = compare_case(path)
    assert res.ok, res.table()
    kinds = {r.key: r.kind for r in res.rows}
    assert kinds["blob/roi"] == "exact" and kinds["blob/x"] == "exact"
    assert kinds["blob/ip"] == "net" and kinds["diff/x"] == "net"
    assert len(res.rows) == 10


def test_out_of_tolerance_is_reported(tmp_path, capsys):
    c = _case(np.random.default_rng(0))
    c["diff/x"] = c["diff/x"] * (1 + 1e-3)
    c["blob/roi"] = c["blob/roi"].copy()
    c["blob/roi"][1, 2] += 1  # an integer coordinate off by one
    path = tmp_path / "bad.npz"
    np.savez(path, **c)
    res = compare_case(path)
    assert not res.ok
    assert res.first_failure.key == "blob/roi"
    failed = [r.key for r in res.rows if not r.ok]
    assert failed == ["blob/roi", "diff/x"]
    assert main([str(path)]) == 1
    out = capsys.readouterr().out
    assert "first out of tolerance: blob/roi" in out and "FAIL" in out


def test_tolerance_rules():
    ref = np.array([0.0, 10.0])
    assert compare_arrays("k", ref + [0, 1e-4 * 11 * 0.99], ref, "net").ok
    assert not compare_arrays("k", ref + [0, 1e-4 * 11 * 1.01], ref, "net").ok
    assert compare_arrays("k", ref + [1e-5 * 11 * 0.99, 0], ref, "tight").ok
    assert not compare_arrays("k", ref + [1e-6, 0], ref, "exact").ok
    r = compare_arrays("k", np.zeros(3), ref, "net")
    assert not r.ok and "shape" in r.note
    assert compare_arrays("k", None, ref, "net").note == "not produced"


def test_subcases_with_top_diffs(tmp_path):
    """Keys under a prefix with topdiff/ seeds (as in the SPP-only case)."""
    x = np.random.default_rng(1).standard_normal((1, 2, 4, 4)).astype(np.float32)
    proto = ('force_backward: true\nlayer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 dim: 4 dim: 4 } } }\n'
             'layer { name: "p" type: "Pooling" bottom: "x" top: "p" pooling_param { pool: AVE kernel_size: 2 stride: 2 } }\n')
    top = x.reshape(1, 2, 2, 2, 2, 2).mean((3, 5))
    g = np.random.default_rng(2).standard_normal((1, 2, 2, 2)).astype(np.float32)
    gx = np.repeat(np.repeat(g, 2, 2), 2, 3) / 4
    np.savez(tmp_path / "sub.npz", **{"a/prototxt": np.array(proto), "a/input/x": x, "a/blob/p": top.astype(np.float32),
                                      "a/topdiff/p": g, "a/diff/x": gx.astype(np.float32)})
    res = compare_case(tmp_path / "sub.npz")
    assert res.ok and [r.key for r in res.rows] == ["a/blob/p", "a/diff/x"], res.table()


def test_synthetic_solver_case(tmp_path):
    """Two SGD steps computed by hand (SPEC section 5)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3)).astype(np.float32)
    t = rng.standard_normal((2, 1)).astype(np.float32)
    w = rng.standard_normal((1, 3)).astype(np.float32)
    proto = ('layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }\n'
             'layer { name: "t" type: "Input" top: "t" input_param { shape { dim: 2 dim: 1 } } }\n'
             'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip" param { lr_mult: 2 decay_mult: 3 } '
             'inner_product_param { num_output: 1 bias_term: false } }\n'
             'layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "t" top: "loss" }\n')
    solver = 'base_lr: 0.1 lr_policy: "step" gamma: 0.5 stepsize: 1 momentum: 0.8 weight_decay: 0.01'
    data, hist = w.astype(np.float64), np.zeros((1, 3))
    keys = {}
    for it in range(2):
        d = x @ data.T - t
        keys[f"iter{it + 1}/loss"] = np.array((d**2).sum() / 4)
        grad = d.T @ x / 2 + 0.01 * 3 * data
        hist = 0.8 * hist + 0.1 * 0.5**it * 2 * grad
        data = data - hist
        keys[f"iter{it + 1}/param/ip/0"] = data.astype(np.float32)
    np.savez(tmp_path / "solver.npz", prototxt=np.array(proto), solver=np.array(solver), **{"input/x": x, "input/t": t,
             "param/ip/0": w}, **keys)
    res = compare_case(tmp_path / "solver.npz")
    assert res.ok, res.table()
    assert len(res.rows) == 4


def test_unreadable_case(tmp_path):
    p = tmp_path / "x.npz"
    p.write_bytes(b"nope")
    res = compare_case(p)
    assert not res.ok and "cannot read the case" in res.error


def test_cli_runs(tmp_path):
    path = tmp_path / "case.npz"
    np.savez(path, **_case(np.random.default_rng(0)))
    r = subprocess.run([sys.executable, str(REPO / "tools" / "compare_caffe.py"), str(path), "--phase", "TEST"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "blob/ip" in r.stdout and "PASS: 10/10" in r.stdout
