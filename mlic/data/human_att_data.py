"""Caffe's ``HumanAttData`` layer as a PyTorch data pipeline (SPEC section 2).

Design
------
Every random choice is made by :class:`HumanAttBatchSampler`, in the process that iterates
the sampler, as a pure function of ``(seed, step)`` or ``(seed, stream position)``; the
dataset (:class:`HumanAttDataset`) only executes a :class:`BatchSpec` (which images, which
scale factor, which mirror flags). A whole batch is one dataset item
(``DataLoader(..., batch_size=None)``), so the batch-level scale draw never lives in a
worker's RNG, and the same seed gives the same batches for any number of workers.

The image order is Caffe's: an endless stream made of the list in file order (or a fresh
permutation per pass when ``shuffle``: shuffled once at start and again each time the
list wraps). Global step k takes the stream positions ``[k*G, (k+1)*G)`` with
``G = batch_size * num_replicas``, so batches are always full and the last batch of a
pass wraps into the next one, exactly as Caffe does. An "epoch" of the sampler is
``ceil(len(list) / G)`` consecutive steps (``set_epoch`` selects which).

Sharding (DistributedSampler style): ``batch_size`` is per rank, as in Caffe's per-GPU
data layers; rank r of step k takes positions ``k*G + r*batch_size ...`` (a disjoint part
of every global batch, and the union over ranks is the single-process stream with batch G).
The scale factor is drawn once per *global* step and is the same on every rank: the step
then is one multi-scale batch of G images, which is what a single process with batch G
would train on, and no rank waits on another that drew a larger scale. Mirror flags are
drawn per stream position, so they do not depend on the number of ranks either.

Batches carry the images as uint8 (``HumanAttBatch.pixels``); the float32 ``data`` blob
is made on first access wherever the batch then lives (after ``batch.to("cuda")``: on the
GPU), bit-exact either way. Workers thus ship a quarter of the bytes, which is what lets
throughput scale with the number of workers.

Forcing choices (e.g. to replay what a Caffe run drew): a single-element ``scale_factors``
fixes the factor, ``mirror=False`` disables flipping, ``shuffle=False`` keeps file order,
``scale_schedule`` gives the factor per step explicitly, and any iterable of hand-made
:class:`BatchSpec` objects can serve as the DataLoader's sampler (explicit per-batch
images, factor and mirror flags).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from typing import Iterator, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mlic.data.datalist import Datalist, DatalistError, ImageReadError, read_datalist
from mlic.data.transforms import (is_unit_scale, mirror_boxes, read_image_bgr, resize_linear,
                                  scale_boxes, scaled_size)
from mlic.data.workers import CLEAN_START_METHOD

# Streams of the seeded generators (numpy SeedSequence entropy = [seed, stream, counter]).
_PERM, _SCALE, _MIRROR = 0, 1, 2


# --------------------------------------------------------------------------------------
# Configuration


@dataclass
class HumanAttDataConfig:
    """The fields of a HumanAttData layer: ``human_att_data_param`` + ``transform_param``
    (mlic.caffe.layers.human_att_data_config reads them from a prototxt)."""

    source: str
    root_folder: str = ""
    batch_size: int = 1
    shuffle: bool = False
    new_width: int = 0
    new_height: int = 0
    scale_factors: Tuple[float, ...] = ()
    att_num: Optional[int] = None
    bbox_num: Optional[int] = None
    mirror: bool = False
    mean_values: Tuple[float, ...] = ()
    scale: float = 1.0

    def __post_init__(self):
        self.scale_factors = tuple(float(f) for f in self.scale_factors)
        self.mean_values = tuple(float(m) for m in self.mean_values)
        self.validate()

    def validate(self) -> None:
        def bad(name, why):
            raise ValueError(f"HumanAttData: {name}={getattr(self, name)!r}: {why}")

        if not isinstance(self.source, (str, os.PathLike)) or not str(self.source):
            bad("source", "a datalist path is required")
        if int(self.batch_size) < 1:
            bad("batch_size", "must be >= 1")
        if self.new_width < 0 or self.new_height < 0 or (self.new_width == 0) != (self.new_height == 0):
            bad("new_width", f"new_width and new_height must both be positive (or both 0 for no "
                f"resize); got {self.new_width}x{self.new_height}")
        for f in self.scale_factors:
            if not math.isfinite(f) or f <= 0:
                bad("scale_factors", "factors must be finite and positive")
        if len(self.mean_values) not in (0, 1, 3):
            bad("mean_values", "give 0, 1 or 3 (BGR) values")
        if not math.isfinite(self.scale):
            bad("scale", "must be finite")
        if self.att_num is not None and int(self.att_num) < 0:
            bad("att_num", "must be >= 0")
        if self.bbox_num is not None and int(self.bbox_num) < 1:
            bad("bbox_num", "must be >= 1 (the nets pool each image's features over its proposals)")


# --------------------------------------------------------------------------------------
# Sampler


@dataclass(frozen=True)
class BatchSpec:
    """One batch to load: datalist indices, the scale factor and per-image mirror flags."""

    indices: Tuple[int, ...]
    scale: float = 1.0
    mirror: Tuple[bool, ...] = ()
    step: int = -1

    def __post_init__(self):
        if not self.indices:
            raise ValueError("BatchSpec needs at least one image index")
        if self.mirror and len(self.mirror) != len(self.indices):
            raise ValueError(f"BatchSpec: {len(self.mirror)} mirror flags for {len(self.indices)} images")


class HumanAttBatchSampler(Sampler):
    """Yields :class:`BatchSpec` objects in Caffe's order (see the module docstring).

    ``scale_schedule``: explicit factor per global step (step k uses
    ``scale_schedule[k % len]``) instead of drawing from ``scale_factors``.
    ``start_step``/``num_steps``: iterate an explicit step range instead of the epoch
    chosen by :meth:`set_epoch` (``num_steps=None`` with ``start_step`` set: endless).
    """

    def __init__(self, num_images: int, batch_size: int, *, shuffle: bool = False,
                 scale_factors: Sequence[float] = (), mirror: bool = False, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0,
                 scale_schedule: Optional[Sequence[float]] = None,
                 steps_per_epoch: Optional[int] = None):
        if num_images < 1:
            raise ValueError("HumanAttBatchSampler: the datalist is empty")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"invalid rank {rank} for num_replicas {num_replicas}")
        if scale_schedule is not None and len(scale_schedule) == 0:
            raise ValueError("scale_schedule must not be empty")
        self.num_images = int(num_images)
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.scale_factors = tuple(float(f) for f in scale_factors)
        self.mirror = bool(mirror)
        self.seed = int(seed)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.scale_schedule = None if scale_schedule is None else tuple(float(f) for f in scale_schedule)
        self.global_batch = self.batch_size * self.num_replicas
        self.steps_per_epoch = (math.ceil(self.num_images / self.global_batch)
                                if steps_per_epoch is None else int(steps_per_epoch))
        self.epoch = 0
        self._range: Optional[Tuple[int, Optional[int]]] = None
        self._cache: dict = {}

    # -- deterministic draws ----------------------------------------------------------
    def _rng(self, stream: int, counter: int) -> np.random.Generator:
        return np.random.default_rng([self.seed & 0xFFFFFFFFFFFFFFFF, stream, counter])

    def _per_pass(self, kind: int, p: int) -> np.ndarray:
        key = (kind, p)
        arr = self._cache.get(key)
        if arr is None:
            if kind == _PERM:
                arr = (self._rng(_PERM, p).permutation(self.num_images) if self.shuffle
                       else np.arange(self.num_images))
            else:
                arr = self._rng(_MIRROR, p).random(self.num_images) < 0.5
            if len(self._cache) >= 8:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = arr
        return arr

    def permutation(self, pass_index: int) -> np.ndarray:
        """The image order of the given pass over the list (identity without shuffle)."""
        return self._per_pass(_PERM, pass_index)

    def scale_for_step(self, step: int) -> float:
        if self.scale_schedule is not None:
            return self.scale_schedule[step % len(self.scale_schedule)]
        if not self.scale_factors:
            return 1.0
        if len(self.scale_factors) == 1:
            return self.scale_factors[0]
        return self.scale_factors[int(self._rng(_SCALE, step).integers(len(self.scale_factors)))]

    def batch(self, step: int) -> BatchSpec:
        """This rank's batch of global step ``step``."""
        n = self.num_images
        start = step * self.global_batch + self.rank * self.batch_size
        idx, mir = [], []
        for pos in range(start, start + self.batch_size):
            p, off = divmod(pos, n)
            idx.append(int(self._per_pass(_PERM, p)[off]))
            mir.append(bool(self._per_pass(_MIRROR, p)[off]) if self.mirror else False)
        return BatchSpec(tuple(idx), self.scale_for_step(step), tuple(mir), step)

    def clone(self) -> "HumanAttBatchSampler":
        """An independent copy (same seed and settings, own position)."""
        c = HumanAttBatchSampler.__new__(HumanAttBatchSampler)
        c.__dict__.update(self.__dict__)
        c._cache = {}
        return c

    # -- iteration --------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self._range = None

    def set_steps(self, start_step: int, num_steps: Optional[int] = None) -> None:
        """Iterate global steps [start_step, start_step + num_steps) (endless if None)."""
        self._range = (int(start_step), None if num_steps is None else int(num_steps))

    def _steps(self) -> Tuple[int, Optional[int]]:
        if self._range is not None:
            return self._range
        return self.epoch * self.steps_per_epoch, self.steps_per_epoch

    def __iter__(self) -> Iterator[BatchSpec]:
        start, count = self._steps()
        step = start
        while count is None or step < start + count:
            yield self.batch(step)
            step += 1

    def __len__(self) -> int:
        count = self._steps()[1]
        if count is None:
            raise TypeError("endless HumanAttBatchSampler has no length")
        return count


# --------------------------------------------------------------------------------------
# Dataset and batches


@dataclass
class HumanAttBatch:
    """The blobs of one batch, laid out exactly as Caffe's layer outputs them.

    ``data``: N x 3 x H x W float32 (BGR, ``(pixel - mean[c]) * scale``), computed on first
    access from ``pixels`` (N x H x W x 3 uint8, BGR, resized and mirrored) on the device
    the batch lives on: workers ship 4x fewer bytes and ``to(device)`` moves uint8.
    ``label_roi``: N x (C + 5B) float32. Views: ``labels`` [N, C], ``boxes`` [N, B, 5],
    ``rois`` [N*B, 6] in WsdRoigen form (i, x1, y1, x2, y2, s). ``indices`` are datalist
    indices, ``mirrored`` the per-image flags, ``scale`` the batch's scale factor.
    """

    pixels: torch.Tensor
    label_roi: torch.Tensor
    att_num: int
    bbox_num: int
    indices: torch.Tensor
    mirrored: torch.Tensor
    scale: float = 1.0
    step: int = -1
    mean_values: Tuple[float, ...] = ()
    pixel_scale: float = 1.0
    _data: Optional[torch.Tensor] = field(default=None, repr=False, compare=False)

    @property
    def data(self) -> torch.Tensor:
        if self._data is None:
            self._data = pixels_to_data(self.pixels, self.mean_values, self.pixel_scale)
        return self._data

    @property
    def labels(self) -> torch.Tensor:
        return self.label_roi[:, : self.att_num]

    @property
    def list_roi(self) -> torch.Tensor:
        return self.label_roi[:, self.att_num:]

    @property
    def boxes(self) -> torch.Tensor:
        return self.list_roi.reshape(self.label_roi.shape[0], self.bbox_num, 5)

    @property
    def rois(self) -> torch.Tensor:
        n = self.label_roi.shape[0]
        b = self.boxes.reshape(n * self.bbox_num, 5)
        i = torch.arange(n, dtype=b.dtype, device=b.device).repeat_interleave(self.bbox_num)
        return torch.cat([i[:, None], b], dim=1)

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def __getstate__(self):  # ship only the uint8 pixels between processes
        state = dict(self.__dict__)
        state["_data"] = None
        return state

    def pin_memory(self, device=None) -> "HumanAttBatch":
        return replace(self, pixels=self.pixels.pin_memory(), label_roi=self.label_roi.pin_memory(), _data=None)

    def to(self, device, non_blocking: bool = False) -> "HumanAttBatch":
        return replace(self, pixels=self.pixels.to(device, non_blocking=non_blocking),
                       label_roi=self.label_roi.to(device, non_blocking=non_blocking), _data=None)


def pixels_to_data(pixels: torch.Tensor, mean_values: Sequence[float] = (), scale: float = 1.0,
                   use_numpy: Optional[bool] = None) -> torch.Tensor:
    """N x H x W x 3 uint8 -> N x 3 x H x W float32 ``(x - mean[c]) * scale``, each step one
    float32 rounding as in Caffe's transformer (bit-exact on CPU and CUDA).
    ``use_numpy`` (default: on CPU tensors) picks the numpy path over the torch one."""
    n, h, w, c = pixels.shape
    means = [float(v) for v in mean_values] if mean_values else [0.0]
    if len(means) == 1:
        means = means * c
    if len(means) != c:
        raise ValueError(f"{len(mean_values)} mean values for {c} channels")
    s32 = np.float32(scale)
    if use_numpy is None:
        use_numpy = pixels.device.type == "cpu"
    if use_numpy:
        # numpy per channel plane: several times faster on CPU than a strided torch kernel
        src = pixels.numpy()
        out = np.empty((n, c, h, w), np.float32)
        m32 = np.asarray(means, np.float32)
        for i in range(n):
            for k in range(c):
                np.subtract(src[i, :, :, k], m32[k], out=out[i, k], dtype=np.float32)
                if s32 != np.float32(1.0):
                    np.multiply(out[i, k], s32, out=out[i, k])
        return torch.from_numpy(out)
    out = torch.empty((n, c, h, w), dtype=torch.float32, device=pixels.device)
    m = torch.tensor(means, dtype=torch.float32, device=pixels.device).view(1, c, 1, 1)
    torch.sub(pixels.permute(0, 3, 1, 2), m, out=out)
    if s32 != np.float32(1.0):
        out.mul_(torch.tensor(float(scale), dtype=torch.float32, device=pixels.device))
    return out


class HumanAttDataset(Dataset):
    """Executes :class:`BatchSpec` objects: ``dataset[spec]`` -> :class:`HumanAttBatch`."""

    def __init__(self, datalist: Datalist, config: HumanAttDataConfig, check_files: str = "construct",
                 image_cache_mb: int = 0):
        """image_cache_mb: keep up to that many MiB of decoded images (at new_width x
        new_height) in memory, so that later epochs do not decode them again (0: none)."""
        if image_cache_mb < 0:
            raise ValueError(f"image_cache_mb must be >= 0, got {image_cache_mb}")
        self._cache: dict = {}
        self._cache_left = int(image_cache_mb) << 20
        if config.att_num is not None and datalist.att_num != config.att_num:
            raise DatalistError(datalist.source, None, f"datalist has {datalist.att_num} labels per line, "
                                f"config att_num is {config.att_num}")
        if config.bbox_num is not None and datalist.bbox_num != config.bbox_num:
            raise DatalistError(datalist.source, None, f"datalist has {datalist.bbox_num} boxes per line, "
                                f"config bbox_num is {config.bbox_num}")
        self.datalist = datalist
        self.config = config
        self.check_files = check_files
        if check_files == "construct":
            datalist.check_files()

    @classmethod
    def from_config(cls, config: HumanAttDataConfig, check_files: str = "construct",
                    base_dir: Optional[str] = None) -> "HumanAttDataset":
        dl = read_datalist(config.source, config.att_num, config.bbox_num, config.root_folder,
                           check_files="none", base_dir=base_dir)
        return cls(dl, config, check_files=check_files)

    def __len__(self) -> int:
        return len(self.datalist)

    def read_image(self, i: int) -> np.ndarray:
        """Image i as Caffe's layer reads it: BGR uint8, resized to new_width x new_height
        (read-only when it comes from the cache)."""
        img = self._cache.get(i)
        if img is None:
            img = self._read_image(i)
            if img.nbytes <= self._cache_left:
                img.flags.writeable = False
                self._cache[i] = img
                self._cache_left -= img.nbytes
        return img

    def _read_image(self, i: int) -> np.ndarray:
        path = self.datalist.image_path(i)
        img = read_image_bgr(path)
        if img is None:
            if not os.path.isfile(path):
                when = ("checked on first read; pass check_files='construct' to check every file "
                        "when the list is loaded") if self.check_files != "construct" else \
                    "it existed when the list was loaded"
                raise self.datalist.error(i, f"image file not found: {path!r} ({when})", ImageReadError)
            raise self.datalist.error(i, f"cannot decode image {path!r} (unreadable, corrupt or truncated)", ImageReadError)
        if self.config.new_width > 0:
            img = resize_linear(img, self.config.new_width, self.config.new_height)
        return img

    def load_batch(self, indices: Sequence[int], scale: float = 1.0,
                   mirror: Sequence[bool] = (), step: int = -1) -> HumanAttBatch:
        cfg = self.config
        n = len(indices)
        mirror = tuple(mirror) if mirror else (False,) * n
        unit = is_unit_scale(scale)
        pix = None
        lab = np.empty((n, self.datalist.att_num + 5 * self.datalist.bbox_num), np.float32)
        for j, i in enumerate(indices):
            i = int(i)
            if not 0 <= i < len(self.datalist):
                raise IndexError(f"image index {i} out of range for {len(self.datalist)} images")
            img = self.read_image(i)
            if not unit:
                w, h = scaled_size(img.shape[1], img.shape[0], scale)
                if w < 1 or h < 1:
                    raise self.datalist.error(i, f"scale factor {scale} turns the {img.shape[1]}x"
                                              f"{img.shape[0]} image into {w}x{h}")
                img = resize_linear(img, w, h)
            if pix is None:
                pix = np.empty((n,) + img.shape, np.uint8)
            elif img.shape != pix.shape[1:]:
                raise self.datalist.error(i, f"image size {img.shape[1]}x{img.shape[0]} differs from the "
                                          f"batch's {pix.shape[2]}x{pix.shape[1]} (set new_width/new_height)")
            if mirror[j]:
                cv2.flip(img, 1, dst=pix[j])
            else:
                pix[j] = img
            boxes = self.datalist.boxes[i]
            if not unit:
                boxes = scale_boxes(boxes, scale)
            if mirror[j]:
                boxes = mirror_boxes(boxes, img.shape[1])
            lab[j, : self.datalist.att_num] = self.datalist.labels[i]
            lab[j, self.datalist.att_num:] = boxes.reshape(-1)
        return HumanAttBatch(
            pixels=torch.from_numpy(pix), label_roi=torch.from_numpy(lab),
            att_num=self.datalist.att_num, bbox_num=self.datalist.bbox_num,
            indices=torch.tensor([int(i) for i in indices], dtype=torch.int64),
            mirrored=torch.tensor(mirror, dtype=torch.bool), scale=float(scale), step=step,
            mean_values=tuple(cfg.mean_values), pixel_scale=float(cfg.scale))

    def __getitem__(self, spec: BatchSpec) -> HumanAttBatch:
        if not isinstance(spec, BatchSpec):
            raise TypeError("HumanAttDataset items are whole batches: index it with a BatchSpec "
                            "(use HumanAttBatchSampler as the DataLoader sampler with batch_size=None)")
        return self.load_batch(spec.indices, spec.scale, spec.mirror, spec.step)


def _worker_init(_worker_id: int) -> None:
    # W workers each running OpenCV's own thread pool would oversubscribe the cores
    # (the DataLoader already gives each worker one torch thread).
    cv2.setNumThreads(1)


class HumanAttDataLoader:
    """A DataLoader over :class:`HumanAttDataset` driven by :class:`HumanAttBatchSampler`.

    ``for batch in loader`` yields the current epoch's :class:`HumanAttBatch` objects;
    ``loader.set_epoch(e)`` selects the epoch; ``loader.iter_steps(start, count)`` iterates
    global steps directly (Caffe-style iteration-based training; ``count=None`` is endless).
    """

    def __init__(self, dataset: HumanAttDataset, sampler: HumanAttBatchSampler, num_workers: int = 0,
                 pin_memory: bool = False, prefetch_factor: Optional[int] = None,
                 persistent_workers: bool = False, multiprocessing_context=None):
        self.dataset = dataset
        self.sampler = sampler
        self._kw = dict(num_workers=int(num_workers), pin_memory=pin_memory,
                        worker_init_fn=_worker_init if num_workers > 0 else None,
                        multiprocessing_context=(multiprocessing_context or CLEAN_START_METHOD)
                        if num_workers > 0 else None)
        if num_workers > 0:
            self._kw["persistent_workers"] = persistent_workers
            if prefetch_factor is not None:
                self._kw["prefetch_factor"] = prefetch_factor
        self._loader = DataLoader(dataset, sampler=sampler, batch_size=None, **self._kw)

    @property
    def config(self) -> HumanAttDataConfig:
        return self.dataset.config

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[HumanAttBatch]:
        return iter(self._loader)

    def __len__(self) -> int:
        return len(self.sampler)

    def iter_steps(self, start_step: int = 0, num_steps: Optional[int] = None) -> Iterator[HumanAttBatch]:
        sampler = self.sampler.clone()
        sampler.set_steps(start_step, num_steps)
        return iter(DataLoader(self.dataset, sampler=sampler, batch_size=None, **self._kw))


def build_loader(config: HumanAttDataConfig, *, seed: int = 0, num_workers: int = 0,
                 num_replicas: int = 1, rank: int = 0, check_files: str = "construct",
                 base_dir: Optional[str] = None, pin_memory: bool = False,
                 scale_schedule: Optional[Sequence[float]] = None,
                 prefetch_factor: Optional[int] = None, persistent_workers: bool = False,
                 datalist: Optional[Datalist] = None, image_cache_mb: int = 0) -> HumanAttDataLoader:
    """The one-call way to get batches for a HumanAttData layer.

    ``base_dir``: where a relative ``source`` and relative image paths are resolved
    (Caffe: the working directory). ``datalist``: an already parsed list to reuse.
    ``image_cache_mb``: decoded images kept in memory (per worker process), see HumanAttDataset.
    """
    if datalist is None:
        datalist = read_datalist(config.source, config.att_num, config.bbox_num, config.root_folder,
                                 check_files="none", base_dir=base_dir)
    dataset = HumanAttDataset(datalist, config, check_files=check_files, image_cache_mb=image_cache_mb)
    sampler = HumanAttBatchSampler(
        len(dataset), config.batch_size, shuffle=config.shuffle, scale_factors=config.scale_factors,
        mirror=config.mirror, seed=seed, num_replicas=num_replicas, rank=rank,
        scale_schedule=scale_schedule)
    return HumanAttDataLoader(dataset, sampler, num_workers=num_workers, pin_memory=pin_memory,
                              prefetch_factor=prefetch_factor, persistent_workers=persistent_workers)
