"""Arguments and outputs of the tiny training runs the training tests share."""
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
NET = ["--input-size", "64", "--student-size", "32", "--pooled-size", "1", "--width", "0.0625",
       "--fc-dim", "16", "--scales", "released"]


def train_args(data, out, stage="wsddn", iters=4, batch=4, extra=()):
    return ["--stage", stage, "--datalist", data["train"], "--root-folder", data["root_folder"], "--out", str(out),
            "--max-iter", str(iters), "--batch-size", str(batch), "--base-lr", "0.01", "--seed", "5",
            "--no-tensorboard", "--quiet", "--checkpoint-period", "2", *NET, *extra]


def final_state(out):
    return torch.load(Path(out) / "final.pt", map_location="cpu", weights_only=False)["model"]
