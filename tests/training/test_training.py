"""End-to-end training on tiny synthetic data: resume, torchrun (gloo) equivalence,
tools/test.py and the demo pipeline."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from mlic import _ext
from tests.training.helpers import NET, REPO, final_state, train_args  # noqa: F401

pytestmark = pytest.mark.skipif(not _ext.extension_available(), reason="mlic._C is not built")


def test_resume_continues_bit_identically(tiny_data, tmp_path):
    from mlic.cli.train import main

    main(train_args(tiny_data, tmp_path / "straight", iters=4))
    # An interrupted run: 3 iterations (checkpoint at 2), then --resume to 4.
    main(train_args(tiny_data, tmp_path / "resumed", iters=3))
    (tmp_path / "resumed" / "final.pt").unlink()
    main(train_args(tiny_data, tmp_path / "resumed", iters=4, extra=["--resume"]))
    a, b = final_state(tmp_path / "straight"), final_state(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    log = (tmp_path / "resumed" / "log.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in log[1:]] == ["1", "2", "3", "4"]


def test_training_moves_weights_and_logs_the_switches(tiny_data, tmp_path):
    from mlic.cli.train import main

    main(train_args(tiny_data, tmp_path / "t", iters=3))
    text = (tmp_path / "t" / "train.log").read_text()
    assert "kd-loss=soft-ce stage1-train=convs+fc teacher=caffe-decay regions=all" in text
    ck = torch.load(tmp_path / "t" / "final.pt", weights_only=False)
    assert ck["meta"]["stage"] == "wsddn" and ck["meta"]["switches"]["teacher"] == "caffe-decay"
    # the same seed at base_lr 0 keeps the initial weights
    main(train_args(tiny_data, tmp_path / "init", iters=1, extra=["--base-lr", "0"]))
    start, trained = final_state(tmp_path / "init"), ck["model"]
    assert start.keys() == trained.keys()
    for k in ("conv1_1.weight", "fc8_c.weight", "fc8_d.weight"):
        assert not torch.equal(start[k], trained[k]), k


def run_main(main, argv, capsys):
    """(exit status, stderr) of a tool's main()."""
    capsys.readouterr()
    rc = main(argv)
    return rc, capsys.readouterr().err


def test_bad_arguments_name_the_problem(tiny_data, tmp_path, capsys):
    from mlic.cli.train import main

    rc, err = run_main(main, train_args(tiny_data, tmp_path / "s1", stage="stage1"), capsys)
    assert rc == 2 and "train.py: error: --stage stage1 needs --teacher" in err and "Traceback" not in err
    rc, err = run_main(main, train_args(tiny_data, tmp_path / "w", extra=["--weights",
                                                                        str(tmp_path / "missing.caffemodel")]), capsys)
    assert rc == 2 and "missing.caffemodel: no such weights file" in err
    rc, err = run_main(main, train_args(tiny_data, tmp_path / "x")[:-1] + ["1.0,abc"], capsys)
    assert rc == 2 and "--scales" in err and len(err.strip().splitlines()) == 1


def test_debug_keeps_the_traceback(tiny_data, tmp_path, capsys):
    from mlic.cli.train import main

    rc, err = run_main(main, train_args(tiny_data, tmp_path / "s1", stage="stage1") + ["--debug"], capsys)
    assert rc == 2 and "Traceback" in err and "UserInputError" in err and "needs --teacher" in err.splitlines()[-1]


def test_library_api_trains_and_evaluates_like_the_tools(tiny_data, tmp_path):
    """train(cfg) / evaluate(cfg) return the final weights' path and the metrics, and give
    the same weights and metrics as the command line with the matching flags."""
    from prototxt_ports import NetConfig
    from mlic.training import DataConfig, EvalConfig, RunConfig, SolverConfig, TrainConfig, evaluate, train
    from mlic.cli.test import main as test_main
    from mlic.cli.train import main

    assert main(train_args(tiny_data, tmp_path / "cli", iters=3)) == 0
    cfg = TrainConfig(
        stage="wsddn", out=str(tmp_path / "api"),
        net=NetConfig(input_size=64, student_size=32, pooled_size=1, width=0.0625, fc_dim=16),
        data=DataConfig(train=tiny_data["train"], root_folder=tiny_data["root_folder"], batch_size=4),
        solver=SolverConfig(base_lr=0.01, max_iter=3),
        run=RunConfig(seed=5, checkpoint_period=2, tensorboard=False, progress=False))
    final = train(cfg)
    assert final == tmp_path / "api" / "final.pt"
    a, b = final_state(tmp_path / "cli"), final_state(tmp_path / "api")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    metrics = evaluate(EvalConfig(weights=str(final), datalist=tiny_data["test"],
                                  root_folder=tiny_data["root_folder"], progress=False))
    assert metrics["images"] == 6 and 0.0 <= metrics["mAP"] <= 1.0
    assert test_main(["--weights", str(tmp_path / "cli" / "final.pt"), "--datalist", tiny_data["test"],
                      "--root-folder", tiny_data["root_folder"], "--out", str(tmp_path / "res"), "--quiet"]) == 0
    cli_metrics = json.loads((tmp_path / "res" / "metrics.json").read_text())
    assert cli_metrics["mAP"] == pytest.approx(metrics["mAP"], abs=0, rel=0)


def test_library_api_raises_instead_of_exiting(tiny_data, tmp_path):
    from mlic.training import DataConfig, TrainConfig, UserInputError, train

    with pytest.raises(UserInputError, match="needs --teacher"):
        train(TrainConfig(stage="stage2", out=str(tmp_path), data=DataConfig(train=tiny_data["train"])))
    with pytest.raises(UserInputError, match="--out is required"):
        train(TrainConfig(stage="wsddn", data=DataConfig(train=tiny_data["train"])))
    with pytest.raises(UserInputError, match="num_classes is 7 but the datalist"):
        from prototxt_ports import NetConfig

        train(TrainConfig(stage="wsddn", out=str(tmp_path), net=NetConfig(num_classes=7),
                          data=DataConfig(train=tiny_data["train"], root_folder=tiny_data["root_folder"])))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process_with_the_global_batch(tiny_data, tmp_path):
    # 2 ranks x batch 2 (gloo, gradients averaged) == 1 process x batch 4: same images and
    # scale per global step (the sampler shards each global batch), no dropout noise.
    from mlic.cli.train import main

    extra = ["--dropout", "0", "--no-mirror"]
    main(train_args(tiny_data, tmp_path / "single", iters=3, batch=4, extra=extra))
    env = dict(os.environ, OMP_NUM_THREADS="1", MLIC_NO_PROGRESS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(REPO / "tools" / "train.py"),
           *train_args(tiny_data, tmp_path / "ddp", iters=3, batch=2, extra=extra + ["--device", "cpu"])]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    a, b = final_state(tmp_path / "single"), final_state(tmp_path / "ddp")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6, msg=k)


def test_tools_test_reports_metrics(tiny_data, tmp_path):
    from mlic.cli.test import main as test_main
    from mlic.cli.train import main

    main(train_args(tiny_data, tmp_path / "t", iters=2))
    test_main(["--weights", str(tmp_path / "t" / "final.pt"), "--datalist", tiny_data["test"], "--root-folder",
               tiny_data["root_folder"], "--out", str(tmp_path / "res"), "--gt", tiny_data["gt_test"],
               "--class-names", tiny_data["classes"], "--multiscale", "--figures"])
    m = json.loads((tmp_path / "res" / "metrics.json").read_text())
    assert m["images"] == 6 and m["test"] == "multi-scale + mirror"
    for k in ("mAP", "CF1", "OF1", "CF1_top3", "CorLoc", "det_mAP"):
        assert 0.0 <= m[k] <= 1.0 or m[k] != m[k], k
    assert (tmp_path / "res" / "scores.csv").read_text().startswith("image,")
    assert (tmp_path / "res" / "pr_curves.png").stat().st_size > 1000


def test_lr_mult_overrides_the_released_multipliers():
    from prototxt_ports.config import RELEASED_MULTIPLIERS
    from mlic.errors import UserInputError
    from mlic.cli.train import parse_lr_mults

    m = parse_lr_mults(["head=1", "fc=0.5,0", "temperature=0"])
    assert m["head"] == ((1.0, 1.0), (2.0, 0.0))  # bias: twice the weight's lr, no decay (as released)
    assert m["fc"] == ((0.5, 0.0), (1.0, 0.0))
    assert m["temperature"] == ((0.0, 0.0),)
    assert m["conv"] == RELEASED_MULTIPLIERS["conv"] and RELEASED_MULTIPLIERS["head"][0] == (10.0, 10.0)
    for bad in ("head", "nope=1", "head=x", "head=-1", "head=1,2,3", "region_sum=1", "head=nan"):
        with pytest.raises(UserInputError, match="--lr-mult"):
            parse_lr_mults([bad])


def test_lr_mult_reaches_the_solver(tiny_data, tmp_path):
    """With head=0 the classifier heads never move; the body does."""
    from mlic.cli.train import main

    main(train_args(tiny_data, tmp_path / "t", iters=3, extra=["--lr-mult", "head=0,0", "--checkpoint-period", "1"]))
    load = lambda it: torch.load(tmp_path / "t" / "checkpoints" / f"iter_{it:08d}.pt", map_location="cpu",
                                 weights_only=False)["model"]
    first, second = load(1), load(2)
    for k in ("fc8_c.weight", "fc8_c.bias", "fc8_d.weight", "fc8_d.bias"):
        assert torch.equal(first[k], second[k]), k
    assert not torch.equal(first["conv1_1.weight"], second["conv1_1.weight"])


def test_max_iter_zero_is_refused(tiny_data, tmp_path, capsys):
    from mlic.cli.train import main

    rc, err = run_main(main, train_args(tiny_data, tmp_path / "t", iters=0), capsys)
    assert rc == 2 and "--max-iter must be at least 1" in err


def test_kd_stage_takes_classifier_weights_into_the_student(tiny_data, tmp_path):
    """--weights of a plain classifier (no 'student.' prefix) initialise a KD stage's student."""
    from mlic.cli.train import main

    main(train_args(tiny_data, tmp_path / "cls", stage="student", iters=1))
    main(train_args(tiny_data, tmp_path / "t", iters=1))
    cls = final_state(tmp_path / "cls")
    # base_lr 0: the loaded weights come out unchanged
    main(train_args(tiny_data, tmp_path / "s1", stage="stage1", iters=1,
                    extra=["--teacher", str(tmp_path / "t" / "final.pt"), "--weights",
                           str(tmp_path / "cls" / "final.pt"), "--base-lr", "0"]))
    s1 = final_state(tmp_path / "s1")
    assert torch.equal(s1["student.conv1_1.weight"], cls["conv1_1.weight"])
    assert torch.equal(s1["student.fc6.weight"], cls["fc6.weight"])
    log = (tmp_path / "s1" / "train.log").read_text()
    # which layers came from which file
    assert f"weights {tmp_path / 'cls' / 'final.pt'} (checkpoint, stage student)" in log
    assert f"teacher {tmp_path / 't' / 'final.pt'} (checkpoint, stage wsddn)" in log


TINY_PROTOTXT = """name: "tiny_cls"
layer { name: "data" type: "HumanAttData" top: "data" top: "label_roi" include { phase: TRAIN }
  transform_param { mirror: true mean_value: 104 mean_value: 117 mean_value: 124 scale: 0.02 }
  human_att_data_param { source: "SOURCE" root_folder: "ROOT" batch_size: 3 shuffle: true
    new_width: 64 new_height: 64 att_num: 4 bbox_num: 6 } }
layer { name: "slice_label_roi" type: "Slice" bottom: "label_roi" top: "labels" top: "list_roi"
  slice_param { axis: 1 slice_point: 4 } }
layer { name: "silence" type: "Silence" bottom: "list_roi" }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2
    weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc" type: "InnerProduct" bottom: "conv1" top: "fc"
  param { lr_mult: 0 decay_mult: 0 } param { lr_mult: 0 decay_mult: 0 }
  inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SigmoidCrossEntropyLoss" bottom: "fc" bottom: "labels" top: "loss" loss_weight: 1 }
"""


def test_prototxt_training_runs_a_caffe_net(tiny_data, tmp_path):
    """--prototxt trains a CaffeNet on its data layer's settings, with its lr_mults; the
    objective goes down on repeated data."""
    from mlic.cli.train import main

    proto = tmp_path / "tiny.prototxt"
    proto.write_text(TINY_PROTOTXT.replace("SOURCE", tiny_data["train"]).replace("ROOT", tiny_data["root_folder"]))
    out = tmp_path / "run"
    main(["--prototxt", str(proto), "--out", str(out), "--max-iter", "30", "--base-lr", "0.05", "--seed", "1",
          "--no-tensorboard", "--quiet", "--checkpoint-period", "10"])
    state = torch.load(out / "final.pt", map_location="cpu", weights_only=False)
    assert state["meta"]["stage"] == "prototxt" and state["meta"]["prototxt"].endswith("tiny.prototxt")
    early = torch.load(out / "checkpoints" / "iter_00000010.pt", map_location="cpu", weights_only=False)["model"]
    trained = state["model"]
    fc = [k for k in trained if "fc" in k]
    conv = [k for k in trained if "conv1" in k]
    assert fc and conv, sorted(trained)
    for k in fc:  # lr_mult 0 and decay_mult 0: never moves
        assert torch.equal(trained[k], early[k]), k
    assert all(not torch.equal(trained[k], early[k]) for k in conv)
    rows = (out / "log.csv").read_text().splitlines()[1:]
    losses = [float(r.split(",")[1]) for r in rows]
    assert len(losses) == 30 and sum(losses[-10:]) < sum(losses[:10])
    assert "tiny.prototxt" in (out / "train.log").read_text()


def test_prototxt_net_logs_each_loss_and_is_tested_on_the_test_datalist(tiny_data, tmp_path):
    """A Caffe net with two loss tops (as train_stage2): log.csv has each; --test-datalist
    scores the images with the sigmoid of the SigmoidCrossEntropyLoss's input."""
    from mlic.cli.train import main

    two_losses = TINY_PROTOTXT.replace(
        'layer { name: "loss" type: "SigmoidCrossEntropyLoss" bottom: "fc" bottom: "labels" top: "loss" loss_weight: 1 }',
        'layer { name: "loss_sig" type: "SigmoidCrossEntropyLoss" bottom: "fc" bottom: "labels" top: "loss_sig" '
        'loss_weight: 1 }\n'
        'layer { name: "loss_l2" type: "EuclideanLoss" bottom: "fc" bottom: "labels" top: "loss_l2" '
        'loss_weight: 0.5 }')
    assert "loss_l2" in two_losses
    proto = tmp_path / "two.prototxt"
    proto.write_text(two_losses.replace("SOURCE", tiny_data["train"]).replace("ROOT", tiny_data["root_folder"]))
    out = tmp_path / "run"
    assert main(["--prototxt", str(proto), "--out", str(out), "--max-iter", "4", "--base-lr", "0.05",
                 "--no-tensorboard", "--quiet", "--test-datalist", tiny_data["test"], "--eval-period", "2"]) == 0
    rows = (out / "log.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert {"loss", "loss_sig", "loss_l2"} <= set(header)
    for r in rows[1:]:
        v = dict(zip(header, r.split(",")))
        assert float(v["loss"]) == pytest.approx(float(v["loss_sig"]) + 0.5 * float(v["loss_l2"]), rel=1e-5)
    evals = (out / "eval.csv").read_text().splitlines()
    assert evals[0].startswith("iter,mAP") and [e.split(",")[0] for e in evals[1:]] == ["2", "4"]
    assert "image scores for testing: sigmoid of blob 'fc'" in (out / "train.log").read_text()


def test_tools_test_bad_input_is_one_sentence(tiny_data, tmp_path, capsys):
    from mlic.cli.test import main as test_main
    from mlic.cli.train import main

    assert main(train_args(tiny_data, tmp_path / "t", iters=1)) == 0
    weights = str(tmp_path / "t" / "final.pt")
    lines = (tmp_path / "missing.txt")
    first, *rest = open(tiny_data["test"]).read().splitlines()
    lines.write_text("\n".join(["no_such_image.jpg " + first.split(" ", 1)[1], *rest]) + "\n")
    garbage = tmp_path / "garbage.txt"
    garbage.write_text("img.jpg 1 0 x\n")
    cases = [
        ([], "--weights is required"),
        (["--weights", weights], "--datalist is required"),
        (["--weights", weights, "--datalist", str(lines), "--root-folder", tiny_data["root_folder"]],
         "no_such_image.jpg"),
        (["--weights", weights, "--datalist", str(garbage)], "garbage.txt"),
        (["--weights", str(tmp_path / "nope.pt"), "--datalist", tiny_data["test"]], "nope.pt does not exist"),
    ]
    for argv, fragment in cases:
        capsys.readouterr()
        rc = test_main(argv + ["--quiet"])
        err = capsys.readouterr().err
        assert rc == 2 and fragment in err and "Traceback" not in err, (argv, err)
        assert err.strip().splitlines()[-1].startswith("test.py: error: ")


def test_tools_test_shows_progress_in_a_redirected_log(tiny_data, tmp_path):
    from mlic.cli.train import main

    assert main(train_args(tiny_data, tmp_path / "t", iters=1)) == 0
    r = subprocess.run([sys.executable, str(REPO / "tools" / "test.py"), "--weights", str(tmp_path / "t" / "final.pt"),
                        "--datalist", tiny_data["test"], "--root-folder", tiny_data["root_folder"], "--multiscale",
                        "--batch-size", "2"], capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 0, r.stderr[-3000:]
    progress = [line for line in r.stderr.splitlines() if "test (10 views): " in line]
    assert progress and progress[-1].split("test (10 views): ")[1].startswith("60/60 image forwards (100%)")


def test_prototxt_errors_name_the_problem(tiny_data, tmp_path, capsys):
    from mlic.cli.train import main

    rc, err = run_main(main, ["--prototxt", "x.prototxt", "--stage", "wsddn", "--out", str(tmp_path)], capsys)
    assert rc == 2 and "exclude each other" in err
    rc, err = run_main(main, ["--prototxt", str(tmp_path / "nope.prototxt"), "--out", str(tmp_path)], capsys)
    assert rc == 2 and "does not exist" in err
    proto = tmp_path / "noloss.prototxt"
    proto.write_text(TINY_PROTOTXT.replace("SOURCE", tiny_data["train"]).replace("ROOT", tiny_data["root_folder"])
                     .replace(" loss_weight: 1", " loss_weight: 0"))
    rc, err = run_main(main, ["--prototxt", str(proto), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "no loss" in err


@pytest.mark.parametrize("name,expect", [("wsddn_train", ("image_level_score", False)),
                                         ("train_stage2", ("fc8_mscoco", True)), ("train_stage1", None)])
def test_image_scores_of_the_released_train_nets(prototxt_ref, name, expect):
    """What --test-datalist scores a --prototxt run by: the teacher's image_level_score
    (probabilities), stage 2's student logits fc8_mscoco through a sigmoid; stage 1 has
    no classifier."""
    from types import SimpleNamespace

    from mlic.caffe.io import load_net_spec
    from mlic.training.tasks import classifier_scores

    spec = load_net_spec(str(prototxt_ref / f"{name}.prototxt"))
    assert classifier_scores(SimpleNamespace(layer_params=list(spec.param.layer)), "label_roi") == expect
