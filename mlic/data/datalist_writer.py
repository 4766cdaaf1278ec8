"""Write a datalist for a labelled image set, with proposals from a source (see
mlic.data.proposals for how they are chosen), over several processes, resumably.

:func:`build_datalist` can take one contiguous shard of the images (so that machines can
split a data set and the shards' lists concatenate into the whole list), and resumes an
interrupted run: finished lines are kept in ``OUT.partial`` (with the settings in
``OUT.partial.json``) until the list is complete.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple

import cv2
import numpy as np

from mlic.data.datalist import DatasetFormatError, format_line
from mlic.data.labelsets import MultiLabelSet
from mlic.data.proposals import PAD_CHOICES, map_boxes_to_frame, select_proposals
from mlic.data.workers import OrderedProcessMap, clean_context


def shard_bounds(n: int, shard: Tuple[int, int]) -> Tuple[int, int]:
    """``[start, stop)`` of shard ``(index, count)`` (0-based index) of n images: contiguous
    blocks in list order, so the shards' lists concatenate into the whole list."""
    i, k = int(shard[0]), int(shard[1])
    if k < 1 or not 0 <= i < k:
        raise ValueError(f"shard must be (index, count) with 0 <= index < count, got {shard!r}")
    return n * i // k, n * (i + 1) // k


def _labelset_digest(labelset: MultiLabelSet) -> str:
    h = hashlib.sha1()
    for k, p in enumerate(labelset.paths):
        key = labelset.keys[k] if labelset.keys is not None else p
        h.update(f"{p}\0{key}\0".encode())
    h.update(np.ascontiguousarray(labelset.labels, dtype=np.uint8).tobytes())
    if labelset.sizes is not None:
        h.update(np.asarray(labelset.sizes, dtype=np.int64).tobytes())
    return h.hexdigest()


_WORKER: dict = {}


def _init_worker(source, image_root: str) -> None:
    # one OpenCV thread per process: the processes already use the cores
    cv2.setNumThreads(1)
    _WORKER.update(source=source, image_root=image_root)


def _image_job(job):
    """In a worker (or inline): read the image when needed -> (size, proposals or None)."""
    path, key, size, read = job
    source, root = _WORKER.get("source"), _WORKER.get("image_root", "")
    image = None
    if read:
        full = os.path.join(root, path) if root else path
        image = cv2.imread(full, cv2.IMREAD_COLOR)
        if image is None:
            why = "not found" if not os.path.isfile(full) else "cannot be decoded"
            raise DatasetFormatError(f"image {full!r} {why} (it is read for its proposals or its size; "
                                     "--image-root locates the images)")
        size = (image.shape[1], image.shape[0])
    result = source(key, path, image) if source is not None else None
    return size, result


def _resume_state(partial: Path, meta_path: Path, meta: dict, expected_paths: Sequence[str], restart: bool) -> int:
    """Lines already done in ``partial`` (0 when starting afresh); truncates a torn last line."""
    if restart or not partial.exists():
        for p in (partial, meta_path):
            if p.exists():
                p.unlink()
        return 0
    try:
        old = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        old = None
    if old != meta:
        diff = sorted(k for k in set(meta) | set(old or {}) if (old or {}).get(k) != meta.get(k))
        raise DatasetFormatError(f"{partial}: an unfinished list written with other settings "
                                 f"({', '.join(diff) if old else 'no readable ' + meta_path.name}); "
                                 "remove it or pass --restart to start over")
    data = partial.read_bytes()
    end = data.rfind(b"\n") + 1  # a line torn by the interruption is redone
    if end < len(data):
        with open(partial, "r+b") as f:
            f.truncate(end)
    lines = data[:end].decode("utf-8").splitlines()
    if len(lines) > len(expected_paths):
        raise DatasetFormatError(f"{partial}: {len(lines)} lines, more than the {len(expected_paths)} to write; "
                                 "remove it or pass --restart")
    for k, line in enumerate(lines):
        if line.split(" ", 1)[0] != expected_paths[k]:
            raise DatasetFormatError(f"{partial}:{k + 1}: expected image {expected_paths[k]!r}, found "
                                     f"{line.split(' ', 1)[0]!r}; remove it or pass --restart")
    return len(lines)


def build_datalist(labelset: MultiLabelSet, out_path: str, *, bbox_num: int, new_width: int, new_height: int,
                   proposals: Optional[Callable] = None, image_root: str = "", pad: str = "repeat",
                   decimals: int = 2, progress: Optional[Callable[[int, int], None]] = None, workers: int = 0,
                   shard: Tuple[int, int] = (0, 1), restart: bool = False) -> int:
    """Write the datalist for ``labelset`` with ``bbox_num`` proposals per image.

    ``proposals``: a :class:`PrecomputedProposals`, :class:`EdgeBoxesProposals`,
    :class:`SelectiveSearchProposals` (or any callable ``(key, image_path, image) ->
    (boxes xyxy [K, 4] in the original image, scores or None)`` with a ``needs_image``
    attribute; it must pickle when ``workers`` > 1). ``image_root`` locates images (to
    read them, or their size when the labels do not carry it).
    ``workers``: processes that read images and compute proposals (0 or 1: this process).
    ``shard``: ``(index, count)``, 0-based: write only that contiguous block of the images.
    An unfinished earlier run with the same settings is continued from ``OUT.partial``
    (finished lines are not redone); ``restart`` discards it. ``progress(done, total)`` is
    called once before the first new line (``done``: lines resumed) and after each line.
    Returns the number of lines written to ``out_path``.
    """
    if bbox_num < 1:
        raise ValueError(f"bbox_num must be >= 1 (the method pools features over proposals), got {bbox_num}")
    if proposals is None:
        raise ValueError("a proposal source is needed")
    if new_width <= 0 or new_height <= 0:
        raise ValueError(f"new_width/new_height must be positive, got {new_width}x{new_height}")
    if pad not in PAD_CHOICES:
        raise ValueError(f"pad must be one of {PAD_CHOICES}, got {pad!r}")
    if getattr(proposals, "score", None) == "rank" and getattr(proposals, "num", bbox_num) != bbox_num:
        raise ValueError(f"the proposals are scored by rank out of num={proposals.num}, but bbox_num={bbox_num}")
    start, stop = shard_bounds(len(labelset), shard)
    needs_image = bool(getattr(proposals, "needs_image", True))
    describe = getattr(proposals, "describe", None)
    meta = {"format": 1, "labels": _labelset_digest(labelset), "bbox_num": int(bbox_num),
            "frame": [int(new_width), int(new_height)], "pad": pad, "decimals": int(decimals),
            "proposals": describe() if describe else repr(proposals), "shard": [int(shard[0]), int(shard[1])],
            "images": [start, stop]}
    out = Path(out_path)
    partial, meta_path = Path(str(out) + ".partial"), Path(str(out) + ".partial.json")
    expected = labelset.paths[start:stop]
    for p in expected:
        if not p or any(c.isspace() for c in p):
            raise DatasetFormatError(f"image path {p!r} is empty or contains whitespace, which the datalist "
                                     "format cannot represent")
    done = _resume_state(partial, meta_path, meta, expected, restart)
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    total = stop - start
    if progress is not None:
        progress(done, total)

    def jobs():
        for i in range(start + done, stop):
            path = labelset.paths[i]
            key = labelset.keys[i] if labelset.keys is not None else path
            size = labelset.sizes[i] if labelset.sizes is not None else None
            yield path, key, size, needs_image or size is None

    # only image-reading sources go to the workers; a precomputed table stays here
    worker_source = proposals if needs_image else None
    parallel = workers > 1 and total - done > 1 and (needs_image or labelset.sizes is None)
    pool = None
    try:
        if parallel:
            pool = OrderedProcessMap(_image_job, int(workers), clean_context([__name__]), initializer=_init_worker,
                                     initargs=(worker_source, image_root), in_flight=1 if needs_image else 8)
            results = pool.imap(jobs())
        else:
            _init_worker(worker_source, image_root)
            results = map(_image_job, jobs())
        with open(partial, "a", newline="\n", encoding="utf-8") as f:
            for k, (size, result) in enumerate(results, start=start + done):
                key = labelset.keys[k] if labelset.keys is not None else labelset.paths[k]
                if result is None:
                    result = proposals(key, labelset.paths[k], None)
                b, sc = result
                b = map_boxes_to_frame(b, size[0], size[1], new_width, new_height)
                boxes = select_proposals(b, sc, bbox_num, new_width, new_height, pad)
                f.write(format_line(labelset.paths[k], labelset.labels[k], boxes, decimals) + "\n")
                f.flush()  # a finished line survives an interruption
                done += 1
                if progress is not None:
                    progress(done, total)
    finally:
        if pool is not None:
            pool.close()
        _WORKER.clear()
    os.replace(partial, out)
    meta_path.unlink()
    return total
