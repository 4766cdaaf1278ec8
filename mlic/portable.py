"""Portable mode: the same bits for a seed on every x86-64 machine, at a cost in speed.

By default a run is reproducible on one machine but not across machines: oneDNN, MKL,
ATen's vectorised kernels and glibc's libm each pick code for the instruction set they
find (AVX-512, AVX2 + FMA, SSE), and those sum and round in different orders; a training
run then drifts apart within a few iterations. With MLIC_PORTABLE=1 the tools start
themselves again with every one of those pinned to code that all x86-64 machines run:

- ATEN_CPU_CAPABILITY=default: ATen's kernels without AVX;
- oneDNN off (torch.backends.mkldnn.enabled = False) and ONEDNN_MAX_CPU_ISA=SSE41: the
  convolutions run as im2col + BLAS;
- MKL_CBWR=COMPATIBLE and MKL_NUM_THREADS=1: MKL's conditional numerical reproducibility
  (its GEMM sums in another order with another number of threads);
- GLIBC_TUNABLES hiding AVX, AVX2 and FMA: glibc's exp/log take their generic paths.

Only environment variables set before a process starts reach all of these, hence the
restart. ATen's thread count does not change the bits (checked in the tests); the torch
build does: compare runs made with the same torch version.
"""
from __future__ import annotations

import os
import sys
from typing import Dict, Optional, Sequence

FLAG = "MLIC_PORTABLE"
ENV: Dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "default",
    "ONEDNN_MAX_CPU_ISA": "SSE41",
    "MKL_CBWR": "COMPATIBLE",
    "MKL_NUM_THREADS": "1",
    "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX,-AVX2,-FMA,-AVX512F",
}


def requested(environ: Optional[Dict[str, str]] = None) -> bool:
    value = (environ if environ is not None else os.environ).get(FLAG, "")
    if value not in ("", "0", "1"):
        raise ValueError(f"{FLAG} must be 0 or 1, got {value!r}")
    return value == "1"


def environment(environ: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """`environ` (default os.environ) with the portable settings added."""
    return {**(environ if environ is not None else os.environ), **ENV}


def restart_if_requested(argv: Optional[Sequence[str]] = None) -> None:
    """Called first by the tools: with MLIC_PORTABLE=1 and the settings not yet in force,
    replace this process by the same command under them (never returns then)."""
    if requested() and any(os.environ.get(k) != v for k, v in ENV.items()):
        args = [sys.executable, *(sys.argv if argv is None else argv)]
        os.execve(sys.executable, args, environment())


def apply() -> None:
    """The in-process part (torch imported): oneDNN off when portable mode is on; a
    warning when the environment of this process lacks the rest (Python was not started
    under `environment()`, e.g. in a notebook)."""
    if requested():
        import warnings

        import torch

        torch.backends.mkldnn.enabled = False
        missing = [k for k, v in ENV.items() if os.environ.get(k) != v]
        if missing:
            warnings.warn(f"{FLAG}=1 but {', '.join(missing)} not set when this process started: its results are "
                          "not portable; start it under mlic.portable.environment() (the tools restart themselves)",
                          stacklevel=2)
