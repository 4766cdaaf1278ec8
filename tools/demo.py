#!/usr/bin/env python
"""Kernels demo: runs each mlic op on the CPU (and CUDA when present), checks it against
the pure-PyTorch reference, and prints timings of the WSDDN head at a small size."""
import argparse
import sys

from mlic.demo import kernels_demo


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    return kernels_demo(device=args.device, seed=args.seed)


if __name__ == "__main__":
    sys.exit(main())
