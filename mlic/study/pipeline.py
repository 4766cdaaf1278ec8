"""The method on the embedded benchmark, as jobs: per seed, the data, the pretrained
stand-in for ImageNet weights, one teacher, the stage-1 variants, the stage-2 arms and
the student without distillation, all from the same starting weights."""
from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

from mlic.study.jobs import Job
from mlic.study.presets import PRETRAIN_SYNTHETIC, Preset
from mlic.training.tasks import Switches

# decoded training images each job keeps in memory (all of them, at these presets' sizes)
IMAGE_CACHE_MB = 1024
# A stage's bits may depend on its number of threads (the stand-in's batch-norm sums
# everywhere; on an Intel Xeon with AVX-512, oneDNN splits the convolutions' weight-gradient
# sums across threads too), so each stage runs with a number that is part of its settings,
# the same in the demo and the study: the stand-in on STANDIN_THREADS, every other stage on
# STAGE_THREADS.
STANDIN_THREADS = 2
STAGE_THREADS = 1
BASELINE = "nokd"
BASELINE_EQUAL = "nokd-equal-budget"  # as many iterations as stage 1 + stage 2
BUDGET_FOLDER = "budget/"  # the budget sweep's jobs (SeedPlan.budget_jobs)


@dataclass(frozen=True)
class Arm:
    """A distilled student: the SPEC section 8 switches (defaults: the released code)."""

    kd_loss: str = "soft-ce"       # soft-ce | l2
    teacher: str = "caffe-decay"   # caffe-decay | frozen
    stage1: str = "convs+fc"       # convs+fc | convs | skip
    regions: str = "all"           # all | topk (stage 1 only)
    soft_scale: Optional[float] = None  # fc8_mscoco_soft's lr_mult (None: the study's choice)

    def __post_init__(self):
        if self.kd_loss not in ("soft-ce", "l2") or self.teacher not in ("caffe-decay", "frozen") or \
                self.stage1 not in ("convs+fc", "convs", "skip") or self.regions not in ("all", "topk"):
            raise ValueError(f"invalid arm {self}")
        if self.stage1 == "skip" and self.regions != "all":
            raise ValueError("regions only applies when stage 1 runs")

    @property
    def key(self) -> str:
        s1 = "skip" if self.stage1 == "skip" else f"{'fc' if self.stage1 == 'convs+fc' else 'convs'}-{self.regions}"
        ss = "" if self.soft_scale is None else f"-ss{self.soft_scale:g}"
        return (f"kd-{'ce' if self.kd_loss == 'soft-ce' else 'l2'}-"
                f"{'decay' if self.teacher == 'caffe-decay' else 'frozen'}-s1{s1}{ss}")

    @property
    def label(self) -> str:
        s1 = "no stage 1" if self.stage1 == "skip" else f"stage 1 {self.stage1}, {self.regions} regions"
        ss = "" if self.soft_scale is None else f", soft-scale lr_mult {self.soft_scale:g}"
        return f"{self.kd_loss}, teacher {self.teacher}, {s1}{ss}"

    @property
    def stage1_key(self) -> Optional[str]:
        if self.stage1 == "skip":
            return None
        return f"stage1-{'fc' if self.stage1 == 'convs+fc' else 'convs'}-{self.regions}-{self.teacher}"

    @classmethod
    def from_key(cls, key: str) -> "Arm":
        for arm in GRID + [RELEASED_SOFT_SCALE]:
            if arm.key == key:
                return arm
        raise ValueError(f"unknown arm {key!r}; arms look like {RELEASED.key}, or name a set: core, main, all")


RELEASED = Arm()
PAPER_L2 = Arm(kd_loss="l2")
# the released arm with the released soft-scale lr_mult, whatever the study chose
RELEASED_SOFT_SCALE = Arm(soft_scale=10.0)
GRID: List[Arm] = [Arm(l, t, s, r) for l, t, (s, r) in itertools.product(
    ("soft-ce", "l2"), ("caffe-decay", "frozen"),
    (("convs+fc", "all"), ("convs+fc", "topk"), ("convs", "all"), ("convs", "topk"), ("skip", "all")))]
# the grid in the order a study runs it: the released recipe and one switch at a time
# first, the all-paper arm next, then the rest
_FIRST = [RELEASED, RELEASED_SOFT_SCALE, PAPER_L2, Arm(teacher="frozen"), Arm(stage1="skip"), Arm(stage1="convs"),
          Arm(regions="topk"), Arm("l2", "frozen", "convs", "topk")]
ALL_ARMS: List[Arm] = _FIRST + [a for a in GRID if a not in _FIRST]
# named sets for --arms: "core" the released arm and four single switches; "main" adds
# stage 1 on the convs alone and the arm with every paper switch; "all" the whole grid
CORE_ARMS = [RELEASED, PAPER_L2, Arm(teacher="frozen"), Arm(stage1="skip"), Arm(regions="topk")]
MAIN_ARMS = CORE_ARMS + [Arm(stage1="convs"), Arm("l2", "frozen", "convs", "topk")]
# "decide": what says whether the teacher helps beyond the training budget: the released
# recipe at both soft-scale lr_mults (10 as released, 1), the paper's L2 (all regions and the top-k), the large preset's best arm of the
# full grid (soft-CE, stage 1 on convs+fc over the top-k regions) with either teacher,
# and no stage 1 (with the student alone at both budgets, and the budget sweep)
DECIDE_ARMS = [RELEASED_SOFT_SCALE, Arm(regions="topk"), PAPER_L2, Arm(teacher="frozen", regions="topk"),
               Arm("l2", regions="topk"), Arm(soft_scale=1.0), Arm(stage1="skip")]
ARM_SETS: Dict[str, List[Arm]] = {"core": CORE_ARMS, "main": MAIN_ARMS, "all": ALL_ARMS, "decide": DECIDE_ARMS}
# what runs at an untuned rate (tools/study.py --rate): the released arm at the released
# soft-scale lr_mult and at lr_mult 1, against the student alone at the same rate
RATE_ARMS = [RELEASED_SOFT_SCALE, Arm(soft_scale=1.0)]


@dataclass
class SeedData:
    root: str          # root folder of the image paths
    fit: str           # training datalist (the training images less the validation ones)
    val: Optional[str]
    test: str
    gt_test: str
    classes: str
    pretrain: str      # datalist of the pretraining images
    pretrain_root: str


def prepare_data(preset: Preset, seed: int, folder: Path, workers: int = 2, log=print) -> SeedData:
    """Writes (or finds, when complete) the benchmark of one seed and its validation split."""
    from mlic.data.synthetic import SyntheticConfig, generate_dataset

    cfg = SyntheticConfig(num_train=preset.train_images, num_test=preset.test_images, bbox_num=preset.proposals,
                          image_size=preset.teacher_size, num_classes=preset.classes, seed=seed,
                          **preset.synthetic)
    pre = SyntheticConfig(num_train=preset.pretrain_images, num_test=max(8, preset.pretrain_images // 10),
                          image_size=preset.teacher_size, num_classes=preset.classes, seed=seed + 7919,
                          frame_width=preset.student_size, frame_height=preset.student_size,
                          **PRETRAIN_SYNTHETIC)
    data, pdata = folder / "data", folder / "pretrain_data"
    for out, c in ((data, cfg), (pdata, pre)):
        marker = out / "complete.json"
        if marker.is_file() and json.loads(marker.read_text()) == json.loads(json.dumps(asdict(c))):
            continue
        log(f"[study] seed {seed}: writing {c.num_train} + {c.num_test} synthetic images to {out}")
        generate_dataset(str(out), c, workers=workers)
        marker.write_text(json.dumps(asdict(c)) + "\n")
    lines = (data / "train.txt").read_text().splitlines()
    val = None
    fit = data / "train.txt"
    if preset.val_fraction > 0:
        import numpy as np

        n_val = max(1, int(round(len(lines) * preset.val_fraction)))
        order = np.random.default_rng([seed, 17]).permutation(len(lines))
        is_val = np.zeros(len(lines), bool)
        is_val[order[:n_val]] = True
        fit, val = data / "fit.txt", data / "val.txt"
        fit.write_text("".join(l + "\n" for l, v in zip(lines, is_val) if not v))
        val.write_text("".join(l + "\n" for l, v in zip(lines, is_val) if v))
    return SeedData(root=str(data) + "/", fit=str(fit), val=None if val is None else str(val),
                    test=str(data / "test.txt"), gt_test=str(data / "gt_test.json"), classes=str(data / "classes.txt"),
                    pretrain=str(pdata / "train.txt"), pretrain_root=str(pdata) + "/")


class SeedPlan:
    """Builds the jobs of one seed in `folder`: the shared ones (stand-in, teacher, stage-1
    variants) once, the students (arms and baseline) per learning-rate setting."""

    def __init__(self, preset: Preset, seed: int, folder: Path, data: SeedData):
        self.preset, self.seed, self.folder, self.data = preset, seed, Path(folder).resolve(), data
        self.body = str(self.folder / "pretrain" / "body.pt")
        self.teacher = str(self.folder / "teacher" / "final.pt")

    def key(self, name: str) -> str:
        return f"seed{self.seed}/{name}"

    def train_config(self, stage: str, rate: float, weights: str, teacher: Optional[str] = None,
                     switches: Optional[Switches] = None, iters: Optional[int] = None,
                     soft_scale_lr_mult: Optional[float] = None):
        """The TrainConfig of one stage at this preset's sizes (its out is set by the job)."""
        from mlic.training import DataConfig, RunConfig, SolverConfig, TrainConfig

        p, it = self.preset, iters or self.preset.iters[stage]
        return TrainConfig(
            stage=stage, weights=weights, teacher=teacher, net=p.net_config(soft_scale_lr_mult),
            switches=switches or Switches(),
            data=DataConfig(train=self.data.fit, root_folder=self.data.root, num_classes=p.classes,
                            batch_size=p.batch, input_scale=p.input_scale, image_cache_mb=IMAGE_CACHE_MB),
            solver=SolverConfig(base_lr=rate, momentum=0.9, weight_decay=0.0005, max_iter=it),
            # KD runs keep their teacher in final.pt: under caffe-decay it moves away from the file's
            # (the diagnosis measures how far it moved)
            run=RunConfig(checkpoint_period=it, keep_checkpoints=1, seed=self.seed, tensorboard=False,
                          progress=False, embed_teacher=teacher is not None))

    def _job(self, name: str, cfg, deps: Sequence[str], evaluate: bool) -> Job:
        d = self.data
        ev: Dict[str, str] = {}
        if evaluate:
            ev["test"] = d.test
            if d.val:
                ev["val"] = d.val
            if cfg.stage == "wsddn":
                ev["gt_test"] = d.gt_test
        p = self.preset
        expected = p.expected_seconds.get(cfg.stage, 0.0) * cfg.solver.max_iter / p.iters[cfg.stage]
        return Job(self.key(name), str(self.folder / name), "train", cfg.to_dict(), [self.key(x) for x in deps], ev,
                   d.root, STAGE_THREADS, expected)

    def shared_jobs(self, arms: Iterable[Arm], tuned: Optional[Dict[str, float]] = None) -> List[Job]:
        """The stand-in, the teacher (at tuned["teacher_lr"] when given) and the stage-1
        variants the arms need."""
        p, d = self.preset, self.data
        net = p.net_config()
        standin = {"net": {"num_classes": p.classes, "num_rois": 4, "input_size": p.student_size,
                           "student_size": p.student_size, "fc_dim": p.fc_dim, "pooled_size": p.pooled,
                           "body": list(net.body)},
                   "datalist": d.pretrain, "root_folder": d.pretrain_root, "iters": p.iters["pretrain"],
                   "batch": p.pretrain_batch, "lr": p.base_lr["pretrain"], "seed": self.seed,
                   "input_scale": p.input_scale, "threads": STANDIN_THREADS}
        jobs = [Job(self.key("pretrain"), str(self.folder / "pretrain"), "standin", standin, [], {}, "", STANDIN_THREADS,
                    p.expected_seconds.get("pretrain", 0.0)),
                self.teacher_job((tuned or {}).get("teacher_lr", p.base_lr["wsddn"]))]
        seen = set()
        for arm in arms:
            s1 = arm.stage1_key
            if s1 is None or s1 in seen:
                continue
            seen.add(s1)
            sw = Switches(stage1_train=arm.stage1, teacher=arm.teacher, regions=arm.regions, topk=p.topk)
            jobs.append(self._job(s1, self.train_config("stage1", p.base_lr["stage1"], self.body, self.teacher, sw),
                                  ["pretrain", "teacher"], False))
        return jobs

    def teacher_job(self, lr: float, subfolder: str = "") -> Job:
        sub = f"{subfolder}/" if subfolder else ""
        return self._job(sub + "teacher", self.train_config("wsddn", lr, self.body), ["pretrain"], True)

    def student_jobs(self, arms: Iterable[Arm], baseline: bool = True, tuned: Optional[Dict[str, float]] = None,
                     subfolder: str = "", equal_budget: bool = False) -> List[Job]:
        """The arms' stage-2 jobs and the baseline in folder/subfolder, at the preset's rates
        or the `tuned` ones ({"lr": base rate of stage 2 and the baseline, "soft_scale":
        fc8_mscoco_soft's lr_mult}). equal_budget adds the baseline trained for as many
        iterations as stage 1 and stage 2 together (BASELINE_EQUAL)."""
        p, tuned = self.preset, tuned or {}
        lr_student = tuned.get("lr", p.base_lr["student"])
        sub = f"{subfolder}/" if subfolder else ""
        jobs = [self._stage2_job(sub + arm.key, arm, tuned) for arm in arms]
        if baseline:
            jobs.append(self._job(sub + BASELINE, self.train_config("student", lr_student, self.body), ["pretrain"],
                                  True))
        if equal_budget:
            it = p.iters["stage1"] + p.iters["stage2"]
            jobs.append(self._job(sub + BASELINE_EQUAL, self.train_config("student", lr_student, self.body, iters=it),
                                  ["pretrain"], True))
        return jobs

    def _stage2_job(self, name: str, arm: Arm, tuned: Dict[str, float], iters: Optional[int] = None) -> Job:
        p = self.preset
        s1 = arm.stage1_key
        start = str(self.folder / s1 / "final.pt") if s1 else self.body
        sw = Switches(kd_loss=arm.kd_loss, teacher=arm.teacher)
        ss = arm.soft_scale if arm.soft_scale is not None else tuned.get("soft_scale", p.soft_scale_lr_mult)
        cfg = self.train_config("stage2", tuned.get("lr", p.base_lr["stage2"]), start, self.teacher, sw, iters=iters,
                                soft_scale_lr_mult=ss)
        return self._job(name, cfg, ["pretrain", "teacher"] + ([s1] if s1 else []), True)

    def budget_jobs(self, arm: Arm, totals: Sequence[int], tuned: Optional[Dict[str, float]] = None,
                    alone_totals: Sequence[int] = ()) -> List[Job]:
        """The budget sweep: the student alone trained for each total of `totals` and of
        `alone_totals` iterations, and `arm` with its stage 2 trained for each total of `totals`
        less its stage 1 (budget/<key>-<total>). Totals the main jobs already train (the
        baselines, the arm itself) are not repeated: budget_key() names the job of each point."""
        tuned = tuned or {}
        lr = tuned.get("lr", self.preset.base_lr["student"])
        jobs = []
        for total in sorted(set(totals) | set(alone_totals)):
            key = self.budget_key(None, total)
            if key.startswith(BUDGET_FOLDER):
                cfg = self.train_config("student", lr, self.body, iters=total)
                jobs.append(self._job(key, cfg, ["pretrain"], True))
            if total not in totals:
                continue
            key = self.budget_key(arm, total)
            if key is not None and key.startswith(BUDGET_FOLDER):
                jobs.append(self._stage2_job(key, arm, tuned, iters=total - self.stage1_iterations(arm)))
        return jobs

    def stage1_iterations(self, arm: Arm) -> int:
        return stage1_iterations(self.preset, arm)

    def budget_key(self, arm: Optional[Arm], total: int) -> Optional[str]:
        return budget_key(self.preset, arm, total)


def stage1_iterations(preset: Preset, arm: Arm) -> int:
    return preset.iters["stage1"] if arm.stage1_key else 0


def budget_key(preset: Preset, arm: Optional[Arm], total: int) -> Optional[str]:
    """The job (name within a seed's folder) that trains `arm` (None: the student alone) for
    `total` iterations in all; None when the arm cannot (its stage 1 alone is as long)."""
    if arm is None:
        if total == preset.iters["stage2"]:
            return BASELINE
        if total == preset.iters["stage1"] + preset.iters["stage2"]:
            return BASELINE_EQUAL
        return f"{BUDGET_FOLDER}{BASELINE}-{total}"
    stage2 = total - stage1_iterations(preset, arm)
    if stage2 < 1:
        return None
    if stage2 == preset.iters["stage2"]:
        return arm.key
    return f"{BUDGET_FOLDER}{arm.key}-{total}"
