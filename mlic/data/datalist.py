"""The HumanAttData datalist format (SPEC section 2): reading a list, writing a line.

One image per line, fields separated by whitespace::

    image_path  l_1 ... l_C  x1 y1 x2 y2 s  (repeated B times)

C = ``att_num`` labels (0/1) and B = ``bbox_num`` proposals (inclusive box corners in the
new_width x new_height frame, then the proposal score). Every line must have exactly
1 + C + 5B fields. Values are kept as float32, the precision Caffe's layer stores them in.

Every problem is reported as a :class:`DatalistError` (a ``ValueError``) naming the file
and the 1-based line number; a file a list is built from (annotations, images, proposals)
that cannot be used, as a :class:`DatasetFormatError`.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

PathLike = Union[str, "os.PathLike[str]"]
log = logging.getLogger("mlic.data")

# A numeric field: a plain decimal number. Python's float() also accepts "nan", "inf" and
# "1_000", none of which is a finite number to Caffe's stream parsing.
_NUM = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_NUMBER = re.compile(_NUM + r"\Z", re.ASCII)
# Any character a plain decimal number cannot hold. Over that alphabet Python's float()
# accepts exactly the strings _NUM matches, so a line free of these parses with float()
# (much faster than a regular expression per field); a failure falls back to the exact check.
_NOT_DECIMAL = re.compile(r"[^0-9eE+\-. ]", re.ASCII)
# Field separators: C's isspace() set (what Caffe's `>>` stops at), not Unicode whitespace.
_FIELD = re.compile(r"[^ \t\r\f\v]+")
# str.split() also splits at these; a line without them splits alike, only faster
_SPLIT_ONLY = re.compile(r"[\x1c-\x1f]")


def _fields(raw: str) -> List[str]:
    if raw.isascii() and _SPLIT_ONLY.search(raw) is None:
        return raw.split()
    return _FIELD.findall(raw)

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


class DatasetFormatError(ValueError):
    """An annotation, image or proposal file cannot be used (missing or not of the expected layout)."""


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


# Box coordinates beyond float32's exactly representable integers cannot be pixel positions;
# they would overflow the integer arithmetic of RoI pooling and the data layer's transforms.
COORD_LIMIT = float(2 ** 24)


def _bad_token(tokens: Sequence[str], first: int) -> Tuple[int, str]:
    for j in range(first, len(tokens)):
        if not is_number(tokens[j]):
            return j, tokens[j]
    return -1, ""


def _field_name(j: int, att_num: Optional[int]) -> str:
    if att_num is None:
        return "a label or box value"
    if j <= att_num:
        return f"label {j}"
    k, r = divmod(j - att_num - 1, 5)
    return f"box {k + 1} {('x1', 'y1', 'x2', 'y2', 'score')[r]}"


def _numbers(tokens: Sequence[str], att_num: Optional[int], expected: Optional[int], file: str, line: int
             ) -> np.ndarray:
    """The numeric fields of a tokenised line as float64, each checked to be a plain decimal
    number that is finite in float32."""
    rest = tokens[1:]
    values = None
    if _NOT_DECIMAL.search(" ".join(rest)) is None:
        try:
            values = np.array(rest, dtype=np.float64)
        except ValueError:
            pass
    if values is None:
        j, tok = _bad_token(tokens, 1)
        hint = _count_hint(tokens, expected if expected is not None else 0) if (expected is not None or j == 1) else ""
        raise DatalistError(file, line, f"field {j + 1} ({_field_name(j, att_num)}) is not a number: {tok!r}" + hint)
    with np.errstate(over="ignore"):
        finite = np.isfinite(values.astype(np.float32))
    if not finite.all():
        j = int(np.argmin(finite)) + 1
        raise DatalistError(file, line, f"field {j + 1} ({_field_name(j, att_num)}) is not a finite "
                            f"float32 value: {tokens[j]!r}")
    return values


def _leading_01(values: np.ndarray) -> int:
    """How many leading values are exactly 0 or 1 (labels may be written 1, 1.0 or 1.00)."""
    other = (values != 0) & (values != 1)
    return int(np.argmax(other)) if other.any() else len(values)


def _boxes_ordered(values: np.ndarray) -> bool:
    b = values.reshape(-1, 5)
    return bool(np.all(b[:, 0] <= b[:, 2]) and np.all(b[:, 1] <= b[:, 3]))


def parse_line(tokens: Sequence[str], att_num: int, bbox_num: int, file: str, line: int
               ) -> Tuple[np.ndarray, np.ndarray]:
    """Parse the numeric fields of one tokenised line -> (labels uint8 [C], boxes float32 [B, 5])."""
    expected = 1 + att_num + 5 * bbox_num
    if len(tokens) != expected:
        raise DatalistError(file, line, f"wrong number of fields: {len(tokens)}, expected {expected} "
                            f"(1 path + att_num={att_num} labels + 5 x bbox_num={bbox_num} box values)"
                            + _count_hint(tokens, expected))
    values = _numbers(tokens, att_num, expected, file, line)
    labels = values[:att_num]
    bad = (labels != 0) & (labels != 1)
    if bad.any():
        j = int(np.argmax(bad)) + 1
        raise DatalistError(file, line, f"field {j + 1} (label {j}) must be 0 or 1, got {tokens[j]!r}")
    _check_coordinates(values[att_num:].reshape(bbox_num, 5), tokens, att_num, file, line)
    return labels.astype(np.uint8), values[att_num:].astype(np.float32).reshape(bbox_num, 5)


def _check_coordinates(boxes: np.ndarray, tokens: Sequence[str], att_num: int, file: str, line: int) -> None:
    big = np.abs(boxes[:, :4]) > COORD_LIMIT
    if big.any():
        k, r = (int(v) for v in np.argwhere(big)[0])
        j = 1 + att_num + 5 * k + r
        raise DatalistError(file, line, f"field {j + 1} ({_field_name(j, att_num)}) is {tokens[j]!r}, beyond "
                            f"+-{COORD_LIMIT:.0f}: box coordinates are pixel positions in the image frame")


def parse_datalist_text(text: str, source: PathLike = "<text>", att_num: Optional[int] = None,
                        bbox_num: Optional[int] = None, root_folder: str = "",
                        base_dir: Optional[PathLike] = None, min_boxes: int = 1) -> Datalist:
    """Parse datalist text (no file checks). Blank lines are skipped; CRLF is accepted.

    The layout (labels per line C, boxes per line B) comes from ``att_num``/``bbox_num``
    when given; what is not given is inferred from all lines together (see
    :func:`read_datalist`) and the inference is logged. ``min_boxes``: fewer boxes per line
    is an error (the method's nets pool features over each image's proposals).
    """
    source = str(source)
    for name, v in (("att_num", att_num), ("bbox_num", bbox_num), ("min_boxes", min_boxes)):
        if v is not None and (not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0):
            raise ValueError(f"{name} must be a non-negative int, got {v!r}")
    if bbox_num is not None and bbox_num < min_boxes:
        raise ValueError(f"bbox_num={bbox_num} is below min_boxes={min_boxes}")
    known = att_num is not None and bbox_num is not None
    expected = 1 + att_num + 5 * bbox_num if known else None
    paths: List[str] = []
    rows: List[np.ndarray] = []   # float32 label and box values of each line
    leading: List[int] = []       # per line: how many leading values are 0/1
    votes: List[int] = []         # per line: the label count it reads as (-1: none)
    line_numbers: List[int] = []
    if text.startswith("\ufeff"):
        raise DatalistError(source, 1, "the file starts with a UTF-8 byte order mark (EF BB BF), which Caffe's "
                            "reader takes as part of the first image path; save the list without it")
    raw_lines = text.split("\n")
    for lineno, raw in enumerate(raw_lines, start=1):
        tokens = _fields(raw)
        if not tokens:
            continue
        if known:
            with _cr_endings(raw):
                lab, box = parse_line(tokens, att_num, bbox_num, source, lineno)
            rows.append(np.concatenate([lab.astype(np.float32), box.reshape(-1)]))
        else:
            with _cr_endings(raw):
                values = _numbers(tokens, att_num, None, source, lineno)
            lead = _leading_01(values)
            # the line's own reading: its leading 0/1 fields, as many as leave whole boxes
            c = lead - ((lead - len(values)) % 5)
            votes.append(c if c >= 0 and _boxes_ordered(values[c:]) else -1)
            leading.append(lead)
            with np.errstate(over="ignore"):
                rows.append(values.astype(np.float32))
        paths.append(tokens[0])
        line_numbers.append(lineno)
    if not rows:
        raise DatalistError(source, None, "the datalist has no entries")

    def tokens_of(i: int) -> List[str]:
        return _fields(raw_lines[line_numbers[i] - 1])

    if known:
        c, b = att_num, bbox_num
    else:
        c, b = _infer(rows, leading, votes, line_numbers, tokens_of, att_num, bbox_num, source)
        for i, values in enumerate(rows):  # every line against the one layout
            if len(values) != c + 5 * b or leading[i] < c:
                parse_line(tokens_of(i), c, b, source, line_numbers[i])  # raises, naming the field
            if (np.abs(values[c:].reshape(b, 5)[:, :4]) > COORD_LIMIT).any():
                _check_coordinates(values[c:].reshape(b, 5), tokens_of(i), c, source, line_numbers[i])
    if b < min_boxes:
        raise DatalistError(source, line_numbers[0], f"{b} proposal boxes per line (C={c} labels and nothing "
                            f"after them), at least {min_boxes} needed: the method pools each image's features "
                            "over its proposals (x1 y1 x2 y2 score after the labels)")
    table = np.stack(rows)
    return Datalist(
        source=source, root_folder=root_folder, att_num=c, bbox_num=b, paths=paths,
        labels=table[:, :c].astype(np.uint8), boxes=np.ascontiguousarray(table[:, c:]).reshape(len(rows), b, 5),
        line_numbers=np.asarray(line_numbers, dtype=np.int64),
        base_dir=None if base_dir is None else os.fspath(base_dir),
    )


# A carriage return that does not end its line: lines separated by CR alone (classic Mac OS)
_CR_INSIDE = re.compile(r"\r[^\s]")


@contextlib.contextmanager
def _cr_endings(raw: str):
    """A line that fails to parse because it is several lines separated by CR alone is
    reported as that, not as the field where the next line's path begins."""
    try:
        yield
    except DatalistError as exc:
        if _CR_INSIDE.search(raw) is None:
            raise
        raise DatalistError(exc.file, exc.line, "lines end in a carriage return alone (CR, classic Mac OS line "
                            "endings), which Caffe's reader does not split at, so they run together into one "
                            f"line; convert the line endings to LF ({exc.reason})") from None


def _layout(c: int, b: int) -> str:
    return f"{c} label{'s' if c != 1 else ''} + {b} box{'es' if b != 1 else ''}"


def _infer(rows, leading, line_votes, line_numbers, tokens_of, att_num, bbox_num, source) -> Tuple[int, int]:
    """The layout (C, B) of lines whose label count and/or box count is not given.

    The field count is the one most lines have (a line that differs is the error). Without
    ``att_num`` each line reads as its leading 0/1 fields, as many as leave whole 5-value
    boxes (the largest such count), provided every box then has x1 <= x2 and y1 <= y2; the
    count most lines agree on is taken (a line that reads otherwise is named in a warning).
    Refused as ambiguous: lines disagreeing evenly, and a
    count 5 smaller that fits too when the 5 fields in between are not all 0 (they could be a
    box of 0/1 values: the format cannot tell).
    """
    counts = Counter(len(v) for v in rows)
    top = max(counts.values())
    n = next(len(v) for v in rows if counts[len(v)] == top)  # the most common count, first seen on ties
    first = next(i for i, v in enumerate(rows) if len(v) == n)

    def where(i):
        return source, line_numbers[i]

    if att_num is not None:
        if (n - att_num) < 0 or (n - att_num) % 5:
            raise DatalistError(*where(first), f"{n + 1} fields cannot hold 1 path + {att_num} labels + 5 per "
                                f"box (att_num={att_num}): {(n - att_num) % 5 if n >= att_num else n - att_num} "
                                "fields left over" + _count_hint(tokens_of(first), 1 + att_num))
        return att_num, (n - att_num) // 5
    if bbox_num is not None:
        if n - 5 * bbox_num < 0:
            raise DatalistError(*where(first), f"{n + 1} fields cannot hold 1 path + labels + {bbox_num} boxes "
                                f"of 5 values (bbox_num={bbox_num})")
        return n - 5 * bbox_num, bbox_num
    votes = Counter(c for v, c in zip(rows, line_votes) if len(v) == n and c >= 0)
    if not votes:
        L = leading[first]
        tokens = tokens_of(first)
        if len(tokens) > 1 and not is_number(tokens[1]):
            raise DatalistError(*where(first), f"field 2 ({tokens[1]!r}) is not a number" + _count_hint(tokens, 0))
        raise DatalistError(*where(first), f"cannot infer the label count: {n} numbers after the path; its {L} "
                            f"leading 0/1 fields (labels) leave {n - L} values, {(n - L) % 5} more than whole "
                            "boxes of 5, and no other split gives boxes with x1 <= x2 and y1 <= y2 on any line; "
                            "state the label count (--num-classes, att_num)")
    ranked = votes.most_common()
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        (c1, k1), (c2, _) = ranked[0], ranked[1]
        raise DatalistError(source, None, f"cannot infer the label count: as many lines ({k1}) read as "
                            f"{_layout(c1, (n - c1) // 5)} as read as {_layout(c2, (n - c2) // 5)}; state the "
                            "label count (--num-classes, att_num)")
    c = ranked[0][0]
    if c >= 5:
        block = [v[c - 5:c] for v, L in zip(rows, leading) if len(v) == n and L >= c]
        block = np.array(block).reshape(-1, 5)
        if len(block) == len(rows) and _boxes_ordered(block.reshape(-1)) and block.any():
            raise DatalistError(source, None, f"cannot infer the label count: every line reads as "
                                f"{_layout(c, (n - c) // 5)} or as {_layout(c - 5, (n - c) // 5 + 1)} (labels "
                                f"{c - 4}..{c} could be a first box of 0/1 values); state the label count "
                                "(--num-classes, att_num)")
    log.info("%s: no label count given; read as %s per line (inferred from %d of %d lines; "
             "state the label count, e.g. --num-classes %d, to skip the guess)", source, _layout(c, (n - c) // 5),
             ranked[0][1], len(rows), c)
    # the lines that read otherwise are read as the others are: each kind is named
    other = next((i for i, (v, k) in enumerate(zip(rows, line_votes)) if len(v) == n and k >= 0 and k != c), None)
    if other is not None:
        k = line_votes[other]
        log.warning("%s:%d reads as %s, unlike the %d lines read as %s (the same number of fields, laid out "
                    "differently); it is read as they are: if that is wrong, state the label count (--num-classes, "
                    "att_num)", source, line_numbers[other], _layout(k, (n - k) // 5), ranked[0][1],
                    _layout(c, (n - c) // 5))
    unordered = next((i for i, (v, k) in enumerate(zip(rows, line_votes)) if len(v) == n and k < 0), None)
    if unordered is not None:
        log.warning("%s:%d has a box with x1 > x2 or y1 > y2 in every reading; it is read as the others are (%s)",
                    source, line_numbers[unordered], _layout(c, (n - c) // 5))
    return c, (n - c) // 5


def format_line(path: str, labels: Sequence[int], boxes: np.ndarray, decimals: int = 2,
                score_decimals: int = 4) -> str:
    """One datalist line (no newline). Rejects paths the space-separated format cannot hold."""
    if not path or any(c.isspace() for c in path):
        raise ValueError(f"image path {path!r} is empty or contains whitespace, which the datalist "
                         "format cannot represent")
    parts = [path] + [str(int(v)) for v in labels]
    for b in np.asarray(boxes, dtype=np.float64).reshape(-1, 5):
        parts += [f"{v:.{decimals}f}" for v in b[:4]] + [f"{b[4]:.{score_decimals}f}"]
    return " ".join(parts)


def read_datalist(source: PathLike, att_num: Optional[int] = None, bbox_num: Optional[int] = None,
                  root_folder: str = "", check_files: str = "construct",
                  base_dir: Optional[PathLike] = None, min_boxes: int = 1) -> Datalist:
    """Read a datalist file.

    ``att_num``/``bbox_num``: the label and box counts per line. Give the label count
    whenever it is known (80 for COCO, 81 for NUS-WIDE, a prototxt's ``att_num``): inferring
    it from the numbers alone is a fallback. What is not given is inferred from all lines
    (logged): the field count most lines have; without ``att_num``, the count of leading 0/1
    fields that leaves whole 5-value boxes with x1 <= x2 and y1 <= y2, as most lines read.
    A line that reads as another layout than most is read as they are, with a warning naming
    it. It is refused when the lines disagree evenly, or when a count 5 smaller fits every line
    too and the five fields in between are not all 0 (they could be a box of 0/1 values: a
    line with the same number of fields laid out differently cannot be told apart).
    Every line must then fit the one layout. ``min_boxes``: fewer boxes per line is an error.
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
    dl = parse_datalist_text(text, source, att_num, bbox_num, root_folder, base_dir, min_boxes)
    if check_files == "construct":
        dl.check_files()
    return dl
