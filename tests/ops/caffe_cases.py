"""Helpers to read the Caffe reference cases (.npz, see the spec's section 9) used by the op tests."""
from __future__ import annotations

import re

import numpy as np
import torch


def load_case(path) -> dict:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def layer_text(prototxt: str, name: str) -> str:
    """The text of `layer { name: "<name>" ... }` (balanced braces)."""
    m = re.search(r'layer\s*\{\s*name:\s*"' + re.escape(name) + r'"', prototxt)
    if m is None:
        raise KeyError(f"layer {name!r} not found in prototxt")
    depth, i = 0, prototxt.index("{", m.start())
    for j in range(i, len(prototxt)):
        if prototxt[j] == "{":
            depth += 1
        elif prototxt[j] == "}":
            depth -= 1
            if depth == 0:
                return prototxt[m.start() : j + 1]
    raise ValueError(f"unbalanced braces in layer {name!r}")


def param(text: str, field: str, default=None):
    """A scalar field `field: value` in a layer's text (numbers as float, enums/strings as str)."""
    m = re.search(r"\b" + re.escape(field) + r'\s*:\s*("[^"]*"|[^\s}]+)', text)
    if m is None:
        if default is None:
            raise KeyError(f"field {field!r} not found")
        return default
    v = m.group(1)
    if v.startswith('"'):
        return v[1:-1]
    try:
        return float(v)
    except ValueError:
        return v


def t(case: dict, key: str) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(case[key]))


def assert_forward_close(ours: torch.Tensor, caffe: torch.Tensor, what: str) -> None:
    """Spec tolerance for forward blobs of custom layers: 1e-5 * (1 + max|caffe|)."""
    assert ours.shape == caffe.shape, f"{what}: shape {tuple(ours.shape)} != Caffe {tuple(caffe.shape)}"
    tol = 1e-5 * (1 + caffe.abs().max().item()) if caffe.numel() else 0.0
    err = (ours.detach().double() - caffe.double()).abs().max().item() if caffe.numel() else 0.0
    assert err <= tol, f"{what}: max |ours - caffe| = {err:.3g} > {tol:.3g}"


def assert_grad_close(ours: torch.Tensor, caffe: torch.Tensor, what: str, rel: float = 1e-4) -> None:
    """Spec tolerance for gradients: 1e-4 relative to the blob's scale."""
    assert ours.shape == caffe.shape, f"{what}: shape {tuple(ours.shape)} != Caffe {tuple(caffe.shape)}"
    scale = caffe.abs().max().item()
    err = (ours.detach().double() - caffe.double()).abs().max().item()
    assert err <= rel * max(scale, 1e-12) + 1e-12, f"{what}: max |ours - caffe| = {err:.3g} (scale {scale:.3g})"
