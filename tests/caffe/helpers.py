"""Small KD runs through tools/train.py for the weight-file tests."""
from tests.conftest import PROTOTXT_REF
from tests.ports.helpers import SMALL, small_prototxt

# --stage flags that build the ports at small_prototxt's sizes. The student keeps the
# released 224: its pool5 is then 7 x 7 as the RoI pooling of stage 1, and the students of
# both stages (and a WSDDN's fc6) share fc6's shape, as at full size.
STUDENT = 224
PORT_NET = ["--input-size", str(SMALL["input_size"]), "--student-size", str(STUDENT),
            "--width", str(1 / SMALL["div"]), "--fc-dim", str(SMALL["fc"])]


def released_prototxt(folder, name):
    """A released prototxt at the small sizes (and the 224 student), written into `folder`."""
    path = folder / f"{name}.prototxt"
    path.write_text(small_prototxt((PROTOTXT_REF / f"{name}.prototxt").read_text(), student_size=STUDENT))
    return path


def train(data, out, *args, iters=2, base_lr=0.01, seed=6):
    """tools/train.py on the small data; the path of final.pt."""
    from mlic.cli.train import main

    assert main(["--datalist", data["train"], "--root-folder", data["root_folder"], "--out", str(out),
                 "--batch-size", "2", "--max-iter", str(iters), "--base-lr", str(base_lr), "--seed", str(seed),
                 "--no-tensorboard", "--quiet", "--checkpoint-period", "100", *args]) == 0
    return out / "final.pt"
