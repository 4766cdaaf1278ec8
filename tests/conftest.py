import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"


def _reference_root() -> Path:
    """Where the recorded Caffe outputs and the released prototxts are: the repository's
    own copy (tests/fixtures, see its README), or another folder of the same layout
    (caffe/, prototxt/) named by MLIC_REFERENCE, or MLIC_SHARED/reference."""
    if os.environ.get("MLIC_REFERENCE"):
        root, var = Path(os.environ["MLIC_REFERENCE"]), "MLIC_REFERENCE"
    elif os.environ.get("MLIC_SHARED"):
        root, var = Path(os.environ["MLIC_SHARED"]) / "reference", "MLIC_SHARED"
    else:
        root, var = FIXTURES, None
    missing = [d for d in ("caffe", "prototxt") if not (root / d).is_dir()]
    if missing:
        how = f" (from {var})" if var else " (the repository's test fixtures: is the checkout complete?)"
        raise pytest.UsageError(f"reference data folder {root}{how} lacks {', '.join(missing)}/")
    return root


REFERENCE = _reference_root()
CAFFE_REF = REFERENCE / "caffe"
PROTOTXT_REF = REFERENCE / "prototxt"

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")

DEVICES = ["cpu", pytest.param("cuda", marks=requires_cuda)]


@pytest.fixture
def caffe_ref():
    return CAFFE_REF


@pytest.fixture
def prototxt_ref():
    return PROTOTXT_REF
