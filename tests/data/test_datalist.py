"""Datalist reader: format, inference of att_num/bbox_num, and every error kind."""
import math
import re

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlic.data import DatalistError, ImageReadError, parse_datalist_text, read_datalist
from mlic.data.human_att_data import HumanAttDataConfig, HumanAttDataset


def _write_img(path, w=8, h=6):
    img = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), img)


def test_parse_basic_crlf_blank_lines():
    text = "a.png 1 0 1 2 3 4 0.5\r\n\r\n\nb.png 0 1 5.5 6 7.25 8 1e-2\r\n"
    dl = parse_datalist_text(text, "x.txt")
    assert (dl.att_num, dl.bbox_num) == (2, 1)
    assert dl.paths == ["a.png", "b.png"]
    assert dl.labels.tolist() == [[1, 0], [0, 1]]
    assert dl.boxes.dtype == np.float32
    np.testing.assert_array_equal(dl.boxes[1, 0], np.float32([5.5, 6, 7.25, 8, 0.01]))
    assert dl.line_numbers.tolist() == [1, 4]
    np.testing.assert_array_equal(dl.label_roi(0), np.float32([1, 0, 1, 2, 3, 4, 0.5]))


def test_tabs_and_multiple_spaces_separate_fields():
    dl = parse_datalist_text("a.png\t1  0 1 2 3 4 5\n", att_num=2)
    assert dl.bbox_num == 1 and dl.labels.tolist() == [[1, 0]]


@pytest.mark.parametrize("att,box,expect", [(None, None, (3, 2)), (3, None, (3, 2)), (None, 2, (3, 2)),
                                            (3, 2, (3, 2))])
def test_inference_of_counts(att, box, expect):
    line = "i.png 1 0 0 1 2 3 4 0.1 5 6 7 8 0.2\n"
    dl = parse_datalist_text(line * 2, att_num=att, bbox_num=box)
    assert (dl.att_num, dl.bbox_num) == expect


def test_inferred_counts_are_checked_on_every_line():
    text = "i.png 1 0 0 1 2 3 4 0.1\nj.png 1 0 1 2 3 4 0.1\n"
    with pytest.raises(DatalistError) as e:
        parse_datalist_text(text, "l.txt")
    assert e.value.line == 2 and "wrong number of fields: 8, expected 9" in str(e.value)
    assert str(e.value).startswith("l.txt:2:")


def test_inference_takes_the_largest_label_count():
    # "1 0 0 1 1" could be 5 labels and no box or 0 labels and one box: the labels win
    assert (parse_datalist_text("i.png 1 0 0 1 1\n").att_num, parse_datalist_text("i.png 1 0 0 1 1\n").bbox_num) \
        == (5, 0)
    dl = parse_datalist_text("i.png 1 0 1 0 1 0 1 0 0 1 0 0 5 6 0.5\n")  # 10 labels, first box starts "0 0"
    assert (dl.att_num, dl.bbox_num) == (10, 1)
    assert parse_datalist_text("i.png 1 0 0 1 1\n", att_num=0).bbox_num == 1
    with pytest.raises(DatalistError, match="pass att_num or bbox_num"):
        parse_datalist_text("i.png 2 3 4\n")


def test_given_counts_that_do_not_fit():
    with pytest.raises(DatalistError, match="att_num=2"):
        parse_datalist_text("i.png 1 0 1 2 3 4 0.5 9\n", att_num=2)
    with pytest.raises(DatalistError, match="bbox_num=3"):
        parse_datalist_text("i.png 1 0 1 2 3 4 0.5\n", bbox_num=3)
    with pytest.raises(ValueError, match="att_num"):
        parse_datalist_text("i.png 1\n", att_num=-1)


@pytest.mark.parametrize("line,match", [
    ("i.png 1 0 1 2 3 4\n", "wrong number of fields: 7, expected 8"),
    ("i.png 1 0 1 2 3 4 0.5 7\n", "wrong number of fields: 9, expected 8"),
    ("i.png 1 0 1 x 3 4 0.5\n", r"field 5 \(box 1 y1\) is not a number: 'x'"),
    ("i.png 1 0 1 2 3 4 nan\n", r"field 8 \(box 1 score\) is not a number: 'nan'"),
    ("i.png 1 0 1 2 inf 4 0.5\n", "is not a number: 'inf'"),
    ("i.png 1 0 1 2 3 4 1_0\n", "is not a number: '1_0'"),
    ("i.png 1 0 1 2 3 4 1e39\n", r"field 8 \(box 1 score\) is not a finite float32 value: '1e39'"),
    ("i.png 1 2 1 2 3 4 0.5\n", r"field 3 \(label 2\) must be 0 or 1, got '2'"),
    ("i.png 0.5 0 1 2 3 4 0.5\n", r"label 1\) must be 0 or 1"),
    ("i.png -1 0 1 2 3 4 0.5\n", r"label 1\) must be 0 or 1"),
    ("my image.png 1 0 1 2 3 4 0.5\n", "path seems to contain whitespace"),
])
def test_malformed_lines(line, match):
    good = "ok.png 0 1 1 2 3 4 0.5\n"
    with pytest.raises(DatalistError, match=match) as e:
        parse_datalist_text(good + line, "list.txt", att_num=2, bbox_num=1)
    assert e.value.file == "list.txt" and e.value.line == 2
    assert str(e.value).startswith("list.txt:2: ")


def test_path_with_space_on_first_line_when_inferring():
    with pytest.raises(DatalistError, match="whitespace"):
        parse_datalist_text("my img.png 1 0 1 2 3 4 0.5\n")


def test_labels_written_as_floats_are_accepted():
    dl = parse_datalist_text("i.png 1.0 0.0 1 2 3 4 0.5\n", att_num=2)
    assert dl.labels.tolist() == [[1, 0]]


def test_empty_and_unreadable_files(tmp_path):
    p = tmp_path / "empty.txt"
    p.write_text("\n\n")
    with pytest.raises(DatalistError, match="no entries"):
        read_datalist(p)
    with pytest.raises(DatalistError, match="cannot read the datalist"):
        read_datalist(tmp_path / "missing.txt")
    q = tmp_path / "bin.txt"
    q.write_bytes(b"a.png 1 1 2 3 4 5\nb\xff.png 1 1 2 3 4 5\n")
    with pytest.raises(DatalistError) as e:
        read_datalist(q)
    assert e.value.line == 2 and "UTF-8" in str(e.value)


def test_missing_image_at_construction(tmp_path):
    _write_img(tmp_path / "a.png")
    (tmp_path / "l.txt").write_text("a.png 1 1 2 3 4 0.5\nb.png 0 1 2 3 4 0.5\n")
    with pytest.raises(ImageReadError) as e:
        read_datalist(tmp_path / "l.txt", base_dir=tmp_path)
    assert e.value.line == 2 and "image file not found" in str(e.value)
    assert "when the list was loaded" in str(e.value)
    assert isinstance(e.value, ValueError)


def test_missing_and_corrupt_image_on_first_read(tmp_path):
    _write_img(tmp_path / "a.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    (tmp_path / "l.txt").write_text("a.png 1 1 2 3 4 0.5\nb.png 0 1 2 3 4 0.5\nbad.png 0 1 2 3 4 0.5\n")
    dl = read_datalist(tmp_path / "l.txt", root_folder=str(tmp_path) + "/", check_files="read")
    cfg = HumanAttDataConfig(source="l.txt", new_width=4, new_height=4)
    ds = HumanAttDataset(dl, cfg, check_files="read")
    assert ds.load_batch([0]).data.shape == (1, 3, 4, 4)
    with pytest.raises(ImageReadError) as e:
        ds.load_batch([0, 1])
    assert e.value.line == 2 and "checked on first read" in str(e.value)
    with pytest.raises(ImageReadError) as e:
        ds.load_batch([2])
    assert e.value.line == 3 and "cannot decode image" in str(e.value)
    with pytest.raises(ValueError, match="check_files"):
        read_datalist(tmp_path / "l.txt", check_files="sometimes")


def test_root_folder_is_a_plain_string_prefix(tmp_path):
    d = tmp_path / "imgs_"
    _write_img(tmp_path / "imgs_a.png")
    (tmp_path / "l.txt").write_text("a.png 1 1 2 3 4 0.5\n")
    dl = read_datalist(tmp_path / "l.txt", root_folder=str(d))  # no separator added
    assert dl.image_path(0) == str(tmp_path / "imgs_a.png")


# ----------------------------------------------------------------------------------
# Fuzzing: the reader raises DatalistError or returns what a plain reading gives.

_NUM_RE = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", re.ASCII)

_tokens = st.one_of(
    st.sampled_from(["0", "1", "2", "0.5", "-3", "12.75", "1e3", "1e39", "-1e-3", ".5", "7.",
                     "nan", "inf", "-inf", "NaN", "1_0", "0x10", "", "x", "1.2.3", "--1", "1e", "e5",
                     "+4", "١", "\u00a0", "a b", "\t", "3\r"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-10**40, 10**40).map(str),
    st.text(max_size=4),
)


def _oracle(tokens, att, box):
    """Independent statement of the format for one line -> (labels, boxes) or None if invalid."""
    if len(tokens) != 1 + att + 5 * box:
        return None
    vals = []
    for t in tokens[1:]:
        if not _NUM_RE.fullmatch(t):
            return None
        v = float(t)
        v32 = np.float32(v) if abs(v) < 3.5e38 else np.float32(np.inf)
        if not math.isfinite(v32):
            return None
        vals.append(v)
    if any(v not in (0.0, 1.0) for v in vals[:att]):
        return None
    return vals[:att], np.float32(vals[att:])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_tokens, min_size=0, max_size=14), st.sampled_from([(2, 1), (0, 2), (3, 0)]))
def test_fuzz_lines(tokens, counts):
    att, box = counts
    line = " ".join(["img.png"] + tokens)
    text = "ok.png " + " ".join(["1"] * att + ["1", "2", "3", "4", "0.5"] * box) + "\n" + line + "\n"
    try:
        dl = parse_datalist_text(text, "f.txt", att_num=att, bbox_num=box)
    except DatalistError as e:
        assert e.file == "f.txt" and e.line in (None, 2)
        fields = re.findall(r"[^ \t\r\f\v\n]+", line)
        assert _oracle(fields, att, box) is None, f"rejected a valid line: {e}"
        return
    fields = re.findall(r"[^ \t\r\f\v\n]+", line)
    expect = _oracle(fields, att, box)
    assert expect is not None, f"accepted an invalid line {line!r}"
    assert len(dl) == 2
    assert dl.labels[1].tolist() == expect[0]
    np.testing.assert_array_equal(dl.boxes[1].reshape(-1), expect[1])


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=120))
def test_fuzz_whole_text_with_inference(text):
    try:
        dl = parse_datalist_text(text, "f.txt")
    except DatalistError:
        return
    assert dl.labels.shape == (len(dl), dl.att_num)
    assert dl.boxes.shape == (len(dl), dl.bbox_num, 5)
    assert np.isfinite(dl.boxes).all()
