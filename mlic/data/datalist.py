"""Reader for the HumanAttData datalist format (SPEC section 2).

One image per line, fields separated by whitespace::

    image_path  l_1 ... l_C  x1 y1 x2 y2 s  (repeated B times)

C = ``att_num`` labels (0/1) and B = ``bbox_num`` proposals (inclusive box corners in the
new_width x new_height frame, then the proposal score). Every line must have exactly
1 + C + 5B fields. Values are kept as float32, the precision Caffe's layer stores them in.

Every problem is reported as a :class:`DatalistError` (a ``ValueError``) naming the file
and the 1-based line number.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

PathLike = Union[str, "os.PathLike[str]"]

# A numeric field: a plain decimal number. Python's float() also accepts "nan", "inf" and
# "1_000", none of which is a finite number to Caffe's stream parsing.
_NUM = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_NUMBER = re.compile(_NUM + r"\Z", re.ASCII)
_NUMBER_LIST = re.compile(_NUM + r"(?: " + _NUM + r")*\Z", re.ASCII)
# Field separators: C's isspace() set (what Caffe's `>>` stops at), not Unicode whitespace.
_FIELD = re.compile(r"[^ \t\r\f\v]+")

CHECK_FILES_CHOICES = ("construct", "read", "none")


class DatalistError(ValueError):
    """A datalist (or one of its images) cannot be used.

    Attributes: ``file`` (the datalist path), ``line`` (1-based line number or None),
    ``reason`` (the message without the location prefix).
    """

    def __init__(self, file: PathLike, line: Optional[int], reason: str):
        self.file = str(file)
        self.line = line
        self.reason = reason
        where = self.file if line is None else f"{self.file}:{line}"
        super().__init__(f"{where}: {reason}")

    def __reduce__(self):  # keep the attributes when raised inside a DataLoader worker
        return (type(self), (self.file, self.line, self.reason))


class ImageReadError(DatalistError):
    """An image named by a datalist line is missing or cannot be decoded."""


def is_number(token: str) -> bool:
    """True when ``token`` is a plain decimal number (what a datalist field may hold)."""
    return _NUMBER.match(token) is not None


@dataclass
class Datalist:
    """A parsed datalist.

    ``paths[i]`` is the path as written on its line (``root_folder`` not applied),
    ``labels`` is uint8 [n, C], ``boxes`` float32 [n, B, 5] (x1, y1, x2, y2, score),
    ``line_numbers[i]`` the 1-based line of entry i in ``source``.
    """

    source: str
    root_folder: str
    att_num: int
    bbox_num: int
    paths: List[str]
    labels: np.ndarray
    boxes: np.ndarray
    line_numbers: np.ndarray
    base_dir: Optional[str] = None

    def __len__(self) -> int:
        return len(self.paths)

    def image_path(self, i: int) -> str:
        """The path OpenCV reads: ``root_folder`` prepended as a plain string (as Caffe does);
        a relative result is taken relative to ``base_dir`` when one is set (Caffe: the
        working directory)."""
        p = self.root_folder + self.paths[i]
        if self.base_dir is not None and not os.path.isabs(p):
            p = os.path.join(self.base_dir, p)
        return p

    def label_roi(self, i: int) -> np.ndarray:
        """Row i of the untransformed ``label_roi`` blob: C labels then 5B box values (float32)."""
        return np.concatenate([self.labels[i].astype(np.float32), self.boxes[i].reshape(-1)])

    # Loader workers receive the dataset by pickling (forkserver/spawn). Large arrays go as
    # torch tensors in shared memory, which torch's multiprocessing pickler sends as handles:
    # no copy per worker. Ordinary pickling still writes the values.
    _SHARE_MIN_BYTES = 1 << 20

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_shm", None)
        for k in ("labels", "boxes"):
            arr = state[k]
            if isinstance(arr, np.ndarray) and arr.nbytes >= self._SHARE_MIN_BYTES:
                state[k] = self._shared(k)
        return state

    def __setstate__(self, state):
        for k in ("labels", "boxes"):
            v = state[k]
            if not isinstance(v, np.ndarray):  # a shared torch tensor
                state[k] = v.numpy()
        self.__dict__.update(state)

    def _shared(self, key: str):
        import torch

        cache = self.__dict__.setdefault("_shm", {})
        t = cache.get(key)
        if t is None or not np.shares_memory(t.numpy(), self.__dict__[key]):
            t = torch.from_numpy(np.ascontiguousarray(self.__dict__[key])).share_memory_()
            cache[key] = t
            object.__setattr__(self, key, t.numpy())  # keep using the shared copy from now on
        return t

    def error(self, i: int, reason: str, cls=DatalistError) -> DatalistError:
        return cls(self.source, int(self.line_numbers[i]), reason)

    def check_files(self, indices: Optional[Iterable[int]] = None) -> None:
        """Raise :class:`ImageReadError` for the first listed image that is not a file."""
        for i in range(len(self)) if indices is None else indices:
            p = self.image_path(i)
            if not os.path.isfile(p):
                raise self.error(i, f"image file not found: {p!r} (checked when the list was loaded)",
                                 ImageReadError)


def _count_hint(tokens: Sequence[str], expected: int) -> str:
    if len(tokens) > expected and len(tokens) > 1 and not is_number(tokens[1]):
        return (f"; the image path seems to contain whitespace ({' '.join(tokens[:2])!r}...), "
                "which this space-separated format cannot represent")
    return ""


def _infer_layout(tokens: Sequence[str], att_num: Optional[int], bbox_num: Optional[int],
                  file: str, line: int) -> Tuple[int, int]:
    n = len(tokens) - 1
    if att_num is not None and bbox_num is not None:
        return att_num, bbox_num
    if att_num is not None:
        rest = n - att_num
        if rest < 0 or rest % 5:
            raise DatalistError(file, line, f"{len(tokens)} fields cannot hold 1 path + {att_num} labels "
                                f"+ 5 per box (att_num={att_num})" + _count_hint(tokens, 1 + att_num))
        return att_num, rest // 5
    if bbox_num is not None:
        c = n - 5 * bbox_num
        if c < 0:
            raise DatalistError(file, line, f"{len(tokens)} fields cannot hold 1 path + labels + "
                                f"{bbox_num} boxes of 5 values (bbox_num={bbox_num})")
        return c, bbox_num
    if n >= 1 and not is_number(tokens[1]):
        raise DatalistError(file, line, f"field 2 ({tokens[1]!r}) is not a number"
                            + _count_hint(tokens, 0))
    # Labels are the leading 0/1 fields and the rest must split into 5-value boxes. Several
    # label counts can fit when the first box starts with 0/1 fields; the largest is taken
    # (a box made only of 0/1 fields, i.e. a 1-2 pixel box, is the only way to be wrong).
    best = None
    for c in range(0, n + 1):
        if c > 0 and tokens[c] not in ("0", "1"):
            break
        if (n - c) % 5 == 0:
            best = c
    if best is None:
        raise DatalistError(file, line, f"cannot infer att_num/bbox_num from the first line: its {n} "
                            "numeric fields do not split into leading 0/1 labels and 5 values per box; "
                            "pass att_num or bbox_num explicitly")
    return best, (n - best) // 5


def _bad_token(tokens: Sequence[str], first: int) -> Tuple[int, str]:
    for j in range(first, len(tokens)):
        if not is_number(tokens[j]):
            return j, tokens[j]
    return -1, ""


def parse_line(tokens: Sequence[str], att_num: int, bbox_num: int, file: str, line: int
               ) -> Tuple[np.ndarray, np.ndarray]:
    """Parse the numeric fields of one tokenised line -> (labels uint8 [C], boxes float32 [B, 5])."""
    expected = 1 + att_num + 5 * bbox_num
    if len(tokens) != expected:
        raise DatalistError(file, line, f"wrong number of fields: {len(tokens)}, expected {expected} "
                            f"(1 path + att_num={att_num} labels + 5 x bbox_num={bbox_num} box values)"
                            + _count_hint(tokens, expected))
    rest = tokens[1:]
    if rest and not _NUMBER_LIST.match(" ".join(rest)):
        j, tok = _bad_token(tokens, 1)
        raise DatalistError(file, line, f"field {j + 1} ({_field_name(j, att_num)}) is not a number: {tok!r}"
                            + _count_hint(tokens, expected))
    values = np.array(rest, dtype=np.float64)
    with np.errstate(over="ignore"):
        values32 = values.astype(np.float32)
    finite = np.isfinite(values32)
    if not finite.all():
        j = int(np.argmin(finite)) + 1
        raise DatalistError(file, line, f"field {j + 1} ({_field_name(j, att_num)}) is not a finite "
                            f"float32 value: {tokens[j]!r}")
    labels = values[:att_num]
    bad = (labels != 0) & (labels != 1)
    if bad.any():
        j = int(np.argmax(bad)) + 1
        raise DatalistError(file, line, f"field {j + 1} (label {j}) must be 0 or 1, got {tokens[j]!r}")
    return labels.astype(np.uint8), values32[att_num:].reshape(bbox_num, 5)


def _field_name(j: int, att_num: int) -> str:
    if j <= att_num:
        return f"label {j}"
    k, r = divmod(j - att_num - 1, 5)
    return f"box {k + 1} {('x1', 'y1', 'x2', 'y2', 'score')[r]}"


def parse_datalist_text(text: str, source: PathLike = "<text>", att_num: Optional[int] = None,
                        bbox_num: Optional[int] = None, root_folder: str = "",
                        base_dir: Optional[PathLike] = None) -> Datalist:
    """Parse datalist text (no file checks). Blank lines are skipped; CRLF is accepted."""
    source = str(source)
    for name, v in (("att_num", att_num), ("bbox_num", bbox_num)):
        if v is not None and (not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0):
            raise ValueError(f"{name} must be a non-negative int, got {v!r}")
    paths: List[str] = []
    labels: List[np.ndarray] = []
    boxes: List[np.ndarray] = []
    line_numbers: List[int] = []
    layout = None
    for lineno, raw in enumerate(text.split("\n"), start=1):
        tokens = _FIELD.findall(raw)
        if not tokens:
            continue
        if layout is None:
            layout = _infer_layout(tokens, att_num, bbox_num, source, lineno)
        lab, box = parse_line(tokens, layout[0], layout[1], source, lineno)
        paths.append(tokens[0])
        labels.append(lab)
        boxes.append(box)
        line_numbers.append(lineno)
    if layout is None:
        raise DatalistError(source, None, "the datalist has no entries")
    c, b = layout
    return Datalist(
        source=source, root_folder=root_folder, att_num=c, bbox_num=b, paths=paths,
        labels=np.stack(labels) if labels else np.zeros((0, c), np.uint8),
        boxes=np.stack(boxes) if boxes else np.zeros((0, b, 5), np.float32),
        line_numbers=np.asarray(line_numbers, dtype=np.int64),
        base_dir=None if base_dir is None else os.fspath(base_dir),
    )


def read_datalist(source: PathLike, att_num: Optional[int] = None, bbox_num: Optional[int] = None,
                  root_folder: str = "", check_files: str = "construct",
                  base_dir: Optional[PathLike] = None) -> Datalist:
    """Read a datalist file.

    ``att_num``/``bbox_num``: expected label and box counts; any one left as None is inferred
    from the first line (and then checked on every line). With both unknown, att_num is the
    largest number of leading 0/1 fields that leaves a multiple of 5 fields for the boxes.
    ``root_folder`` is prepended to every path as a plain string, as Caffe does.
    ``check_files``: ``"construct"`` checks that every image exists now; ``"read"`` defers
    the check to the first read of each image (for huge lists on slow file systems);
    ``"none"`` is the same as ``"read"`` (the read itself still fails clearly).
    ``base_dir``: directory that a relative ``source`` and relative image paths are taken
    relative to (Caffe uses the working directory; None keeps that behaviour).
    """
    if check_files not in CHECK_FILES_CHOICES:
        raise ValueError(f"check_files must be one of {CHECK_FILES_CHOICES}, got {check_files!r}")
    source = os.fspath(source)
    if base_dir is not None and not os.path.isabs(source):
        source = os.path.join(os.fspath(base_dir), source)
    try:
        raw = Path(source).read_bytes()
    except OSError as exc:
        raise DatalistError(source, None, f"cannot read the datalist: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        lineno = raw[: exc.start].count(b"\n") + 1
        raise DatalistError(source, lineno, "line is not valid UTF-8 text") from None
    dl = parse_datalist_text(text, source, att_num, bbox_num, root_folder, base_dir)
    if check_files == "construct":
        dl.check_files()
    return dl
