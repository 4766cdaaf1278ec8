import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MLIC_SHARED", REPO.parent / "shared"))
CAFFE_REF = SHARED / "reference" / "caffe"
PROTOTXT_REF = SHARED / "reference" / "prototxt"

requires_shared = pytest.mark.skipif(
    not CAFFE_REF.is_dir(),
    reason=f"reference data not found at {SHARED} (the ../shared folder beside the repository, "
    "or set MLIC_SHARED); these tests compare against real Caffe outputs",
)

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")

DEVICES = ["cpu", pytest.param("cuda", marks=requires_cuda)]


@pytest.fixture
def caffe_ref():
    if not CAFFE_REF.is_dir():
        pytest.skip(f"reference data not found at {SHARED}")
    return CAFFE_REF


@pytest.fixture
def prototxt_ref():
    if not PROTOTXT_REF.is_dir():
        pytest.skip(f"reference prototxts not found at {SHARED}")
    return PROTOTXT_REF
