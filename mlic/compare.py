"""Comparison of this project's nets against recorded Caffe outputs (SPEC sections 7, 9):
the logic of tools/compare_caffe.py. It sits above mlic.caffe (the nets), mlic.data (the
data-layer case) and mlic.engine (the solver case runs through the one training loop).

A reference case is an .npz: ``prototxt``, ``meta`` (JSON), ``input/<blob>``,
``blob/<blob>``, ``diff/<blob>``, ``param/<layer>/<i>``, ``param_diff/<layer>/<i>``;
solver cases add ``solver`` and ``iter<k>/...``; a case may hold sub-cases under a
prefix (``<p>/prototxt``, ``<p>/input/...``, ``<p>/topdiff/<blob>`` seeding backward);
data-layer cases hold ``<p>/batch<k>/<top>`` for consecutive batches of a HumanAttData
net whose files lie in ``<case>_images/`` beside the npz.

The table shows per key the max absolute difference, the max relative difference
(to max |caffe|) and err = max |ours - caffe| / (1 + max |caffe|), which is held to the
tolerances of SPEC section 7:
  exact  — integer-valued outputs and pure copies of exact inputs (RoI rows, slices): err == 0
  tight  — forward blobs of layers computed from exact inputs without matrix products
           (custom layers: ROIPooling, Interp, Pooling, SPP, losses, ...): err <= 1e-5
  net    — blobs downstream of convolutions/inner products, all diffs and solver
           states: err <= 1e-4
"""
from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from mlic.caffe.errors import CaffeError
from mlic.caffe.io import load_net_spec, read_caffemodel, read_text_file
from mlic.caffe.net import CaffeNet
from mlic.caffe.weight_files import caffemodel_to_param_dict
from mlic.caffe.weights import load_caffemodel, load_param_dict
from mlic.engine.caffe_solver import Solver

TOL = {"exact": 0.0, "tight": 1e-5, "net": 1e-4}


@dataclass
class Row:
    key: str
    kind: str
    max_abs: float = float("nan")
    max_ref: float = float("nan")
    err: float = float("nan")
    ok: bool = False
    note: str = ""

    @property
    def tol(self) -> float:
        return TOL[self.kind]

    @property
    def max_rel(self) -> float:
        """max |ours - caffe| / max |caffe| (inf where Caffe's blob is all zeros and ours is not)."""
        if self.max_ref and self.max_ref == self.max_ref:
            return self.max_abs / self.max_ref
        return 0.0 if self.max_abs == 0 else float("inf")


@dataclass
class CaseResult:
    case: str
    rows: List[Row] = field(default_factory=list)
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error is None and all(r.ok for r in self.rows)

    @property
    def first_failure(self) -> Optional[Row]:
        for r in self.rows:
            if not r.ok:
                return r
        return None

    def table(self) -> str:
        out = io.StringIO()
        out.write(f"case {self.case}\n")
        w = max([len(r.key) for r in self.rows] + [10])
        out.write(f"  {'key':{w}s} {'kind':5s} {'max abs':>11s} {'max rel':>10s} {'max|caffe|':>11s} {'err':>10s} "
                  f"{'tol':>7s}  result\n")
        for r in self.rows:
            res = "ok" if r.ok else "FAIL"
            note = f"  ({r.note})" if r.note else ""
            out.write(
                f"  {r.key:{w}s} {r.kind:5s} {r.max_abs:11.4g} {r.max_rel:10.3g} {r.max_ref:11.4g} {r.err:10.3g} "
                f"{r.tol:7.0e}  {res}{note}\n"
            )
        if self.error:
            out.write(f"  ERROR: {self.error}\n")
        f = self.first_failure
        if f is not None:
            out.write(f"  first out of tolerance: {f.key} (err {f.err:.3g} > {f.tol:g}){' ' + f.note if f.note else ''}\n")
        out.write(f"  {'PASS' if self.ok else 'FAIL'}: {sum(r.ok for r in self.rows)}/{len(self.rows)} within tolerance\n")
        return out.getvalue()


def compare_arrays(key: str, ours, ref, kind: str) -> Row:
    row = Row(key, kind)
    ref = np.asarray(ref)
    if ours is None:
        row.note = "not produced"
        return row
    if isinstance(ours, torch.Tensor):
        ours = ours.detach().cpu().double().numpy()
    ours = np.asarray(ours, dtype=np.float64)
    refd = ref.astype(np.float64)
    if ours.shape != refd.shape:
        if ours.size == refd.size and ours.size and ours.squeeze().shape == refd.squeeze().shape:
            ours = ours.reshape(refd.shape)
        else:
            row.note = f"shape {list(ours.shape)} vs caffe {list(refd.shape)}"
            return row
    if refd.size == 0:
        row.max_abs = row.max_ref = row.err = 0.0
        row.ok = True
        return row
    same_nan = np.isnan(ours) == np.isnan(refd)
    d = np.abs(np.where(np.isnan(refd), 0.0, ours - refd))
    d = np.where(same_nan, d, np.inf)
    row.max_abs = float(np.nanmax(d))
    row.max_ref = float(np.nanmax(np.abs(refd))) if np.isfinite(refd).any() else float("nan")
    scale = 1.0 + (row.max_ref if np.isfinite(row.max_ref) else 0.0)
    row.err = row.max_abs / scale
    row.ok = bool(row.err <= TOL[kind]) if kind != "exact" else bool(row.max_abs == 0.0)
    return row


# ----------------------------------------------------------------------------- case loading


def _str(a) -> str:
    return str(np.asarray(a).item()) if np.asarray(a).shape == () else str(a)


def _blob_kinds(net) -> Dict[str, str]:
    """'exact' / 'tight' / 'net' per blob from the chain of layers that computed it."""
    kinds: Dict[str, str] = {}
    order = {"exact": 0, "tight": 1, "net": 2}
    for layer in net.layers.values():
        own = "exact" if layer.EXACT else ("tight" if layer.TIGHT else "net")
        worst = own
        for b in layer.bottom_names:
            k = kinds.get(b, "exact")
            if order[k] > order[worst]:
                worst = k
        for t in layer.top_names:
            prev = kinds.get(t)
            kinds[t] = worst if prev is None or order[worst] > order[prev] else prev
    return kinds


def _device(device):
    return torch.device(device) if device is not None else torch.device("cpu")


def _load_params(net, z, prefix, caffemodel, case_path: Path, res: CaseResult):
    pkeys = {k[len(prefix) + 6 :]: z[k] for k in z.files if k.startswith(prefix + "param/")}
    auto_model = case_path.with_suffix(".caffemodel")
    if caffemodel is not None:
        report = load_caffemodel(net, caffemodel)
        if report.missing:
            raise ValueError(f"{caffemodel}: no weights for layer(s) {report.missing}")
    elif pkeys:
        report = load_param_dict(net, {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in pkeys.items()},
                                 f"{case_path}: param/")
        if report.missing:
            raise ValueError(f"{case_path}: no param/ keys for layer(s) {report.missing}")
        if not prefix and auto_model.exists():
            # the caffemodel written by Caffe must hold exactly these weights
            stored = caffemodel_to_param_dict(auto_model)
            for k, v in pkeys.items():
                res.rows.append(compare_arrays(f"caffemodel:{k}", stored.get(k), v, "exact"))
            check = type(net)(net.spec, net.phase)
            r2 = load_caffemodel(check, auto_model)
            missing = [m for m in r2.missing if m in net.params]
            row = Row(f"caffemodel:load {auto_model.name}", "exact", 0.0, 0.0, 0.0, not missing,
                      f"missing {missing}" if missing else "")
            res.rows.append(row)


def _run_standard(z, prefix: str, case_path: Path, res: CaseResult, phase, caffemodel, device, ops_backend):
    meta = json.loads(_str(z[prefix + "meta"])) if prefix + "meta" in z.files else {}
    if "meta" in z.files and not meta:
        meta = json.loads(_str(z["meta"]))
    phase = phase or meta.get("phase", "TEST")
    net = CaffeNet(_str(z[prefix + "prototxt"]), phase, retain_diffs=True, ops_backend=ops_backend).to(_device(device))
    _load_params(net, z, prefix, caffemodel, case_path, res)
    inputs = {k[len(prefix) + 6 :]: z[k] for k in z.files if k.startswith(prefix + "input/")}
    net.forward(**inputs)
    kinds = _blob_kinds(net)
    for k in z.files:
        if k.startswith(prefix + "blob/"):
            name = k[len(prefix) + 5 :]
            res.rows.append(compare_arrays(k, net.blobs.get(name), z[k], kinds.get(name, "net")))
    has_diff = any(k.startswith(prefix + "diff/") or k.startswith(prefix + "param_diff/") for k in z.files)
    if not has_diff:
        return
    seeds = {}
    for k in z.files:
        if k.startswith(prefix + "topdiff/"):
            seeds[k[len(prefix) + 8 :]] = z[k]
    if not seeds:
        loss_tops = net.loss_tops
        for name in net.output_names:
            if name not in loss_tops and prefix + "diff/" + name in z.files:
                seeds[name] = z[prefix + "diff/" + name]
    net.backward(seeds)
    diffs = net.blob_diffs
    for k in z.files:
        if k.startswith(prefix + "diff/"):
            res.rows.append(compare_arrays(k, diffs.get(k[len(prefix) + 5 :]), z[k], "net"))
    pdiffs = net.param_diffs()
    for k in z.files:
        if k.startswith(prefix + "param_diff/"):
            res.rows.append(compare_arrays(k, pdiffs.get(k[len(prefix) + 11 :]), z[k], "net"))


def _run_solver(z, case_path: Path, res: CaseResult, device, ops_backend):
    net = CaffeNet(_str(z["prototxt"]), "TRAIN", ops_backend=ops_backend).to(_device(device))
    pkeys = {k[6:]: torch.from_numpy(np.ascontiguousarray(z[k])) for k in z.files if k.startswith("param/")}
    load_param_dict(net, pkeys, f"{case_path}: param/")
    solver = Solver(_str(z["solver"]), net)
    inputs = {k[6:]: z[k] for k in z.files if k.startswith("input/")}
    iters = sorted({int(m.group(1)) for k in z.files for m in [re.match(r"iter(\d+)/", k)] if m})
    done = 0
    for it in iters:
        solver.step(it - done, inputs)
        done = it
        for k in z.files:
            if not k.startswith(f"iter{it}/"):
                continue
            rest = k[len(f"iter{it}/") :]
            if rest.startswith("param/"):
                layer, _, i = rest[6:].rpartition("/")
                p = net.params.get(layer)
                ours = p[int(i)] if p is not None and int(i) < len(p) else None
                res.rows.append(compare_arrays(k, ours, z[k], "net"))
            elif rest == "loss":
                # the 'loss' blob of that iteration's forward (what pycaffe shows after step)
                ours = net.blobs.get("loss", net.objective)
                res.rows.append(compare_arrays(k, ours, z[k], "net"))


def _run_data(z, prefix: str, case_path: Path, res: CaseResult, data_dir, ops_backend):
    ddir = Path(data_dir) if data_dir else case_path.parent / f"{case_path.stem}_images"
    net = CaffeNet(_str(z[prefix + "prototxt"]), "TRAIN", data_dir=str(ddir), ops_backend=ops_backend)
    batches = sorted({int(m.group(1)) for k in z.files for m in [re.match(re.escape(prefix) + r"batch(\d+)/", k)] if m})
    for b in batches:
        with torch.no_grad():
            net.forward()
        for k in z.files:
            if k.startswith(f"{prefix}batch{b}/"):
                name = k[len(f"{prefix}batch{b}/") :]
                res.rows.append(compare_arrays(k, net.blobs.get(name), z[k], "tight"))


class _FullFloat32:
    """Caffe's arithmetic while comparing: no TF32 in CUDA convolutions and matmuls, and on
    the CPU plain BLAS GEMMs rather than oneDNN's, whose AVX-512 blocking sums long
    reductions (weight gradients over N*R rows) in an order several times less accurate,
    enough to leave 1e-4 on ill-conditioned cases (a saturated CrossEntropyLoss)."""

    def __enter__(self):
        self.saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
                      torch.backends.mkldnn.enabled)
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.mkldnn.enabled = False

    def __exit__(self, *exc):
        (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
         torch.backends.mkldnn.enabled) = self.saved


def compare_case(path, *, prototxt=None, caffemodel=None, phase=None, device=None, data_dir=None,
                 ops_backend: str = "auto") -> CaseResult:
    """Run one reference case; never raises for a bad case (the error is in the result).
    `ops_backend`: the mlic.ops back end of the net's layers (CaffeNet's argument)."""
    with _FullFloat32():
        return _compare_case(path, prototxt=prototxt, caffemodel=caffemodel, phase=phase, device=device,
                             data_dir=data_dir, ops_backend=ops_backend)


def _compare_case(path, *, prototxt, caffemodel, phase, device, data_dir, ops_backend) -> CaseResult:
    path = Path(path)
    res = CaseResult(path.name)
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as exc:
        res.error = f"{path}: cannot read the case: {exc}"
        return res
    try:
        files = set(z.files)
        if prototxt is not None:
            text = read_text_file(prototxt, "network definition (prototxt)")
            keys = [k for k in files if k.endswith("prototxt")] or ["prototxt"]
            z = _Override(z, {k: text for k in keys})
        if "solver" in files:
            _run_solver(z, path, res, device, ops_backend)
            return res
        prefixes = sorted({k[: -len("prototxt")] for k in files if k.endswith("prototxt")})
        if not prefixes and "prototxt" not in z.files:
            res.error = f"{path}: no 'prototxt' key; not a reference case"
            return res
        for prefix in prefixes or [""]:
            if any(k.startswith(prefix + "batch") for k in files):
                _run_data(z, prefix, path, res, data_dir, ops_backend)
            else:
                _run_standard(z, prefix, path, res, phase, caffemodel, device, ops_backend)
    except Exception as exc:  # report, do not crash the table
        res.error = f"{type(exc).__name__}: {exc}"
    return res


class _Override:
    """An npz view with some keys replaced."""

    def __init__(self, z, extra):
        self._z, self._extra = z, extra
        self.files = list(dict.fromkeys(list(z.files) + list(extra)))

    def __getitem__(self, k):
        return np.asarray(self._extra[k]) if k in self._extra else self._z[k]


def check_inputs(cases, prototxt=None, caffemodel=None) -> None:
    """Raise a CaffeError naming the file when a case, --prototxt or --caffemodel cannot
    be read (before any comparison runs)."""
    for c in cases:
        if not Path(c).is_file():
            raise CaffeError(f"{c}: no such reference case file")
        try:
            np.load(c, allow_pickle=False).files
        except Exception as exc:
            raise CaffeError(f"{c}: not a reference case (.npz): {type(exc).__name__}: {exc}") from None
    if prototxt is not None:
        load_net_spec(Path(prototxt))
    if caffemodel is not None:
        read_caffemodel(caffemodel)
