"""--amp on every stage (CPU autocast, bfloat16), at small sizes: the ops' Autocast kernels
compute in float32, so the reduced-precision activations meet the float32 RoIs."""
from pathlib import Path

import pytest
import torch

from mlic import _ext

pytestmark = pytest.mark.skipif(not _ext.extension_available(), reason="mlic._C is not built")
NET = ["--input-size", "64", "--student-size", "32", "--pooled-size", "1", "--width", "0.0625",
       "--fc-dim", "16", "--scales", "released"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from mlic.data.synthetic import SyntheticConfig, generate_dataset

    root = tmp_path_factory.mktemp("amp")
    data = generate_dataset(str(root / "data"), SyntheticConfig(num_train=8, num_test=2, bbox_num=6, image_size=64,
                                                                num_classes=4, seed=3))
    return root, data


def _train(runs, stage, extra=()):
    from mlic.cli.train import main

    root, data = runs
    out = root / stage
    args = ["--stage", stage, "--datalist", data["train"], "--root-folder", data["root_folder"], "--out", str(out),
            "--max-iter", "2", "--batch-size", "4", "--base-lr", "0.01", "--seed", "5", "--no-tensorboard",
            "--quiet", "--checkpoint-period", "2", "--amp", *NET, *extra]
    assert main(args) == 0
    state = torch.load(Path(out) / "final.pt", map_location="cpu", weights_only=False)["model"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), stage
    return out / "final.pt"


@pytest.mark.parametrize("stage", ["wsddn", "student", "stage1", "stage2"])
def test_amp_trains_every_stage(runs, stage):
    extra = ()
    if stage in ("stage1", "stage2"):
        teacher = runs[0] / "wsddn" / "final.pt"
        if not teacher.exists():
            _train(runs, "wsddn")
        extra = ("--teacher", str(teacher))
    _train(runs, stage, extra)
