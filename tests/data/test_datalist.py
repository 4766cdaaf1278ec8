"""Datalist reader: format, inference of att_num/bbox_num, and every error kind."""
import math
import re

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlic.data import DatalistError, ImageReadError, parse_datalist_text, read_datalist
from mlic.data.datalist import format_line
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
    # "1 0 0 1 1" could be 5 labels and no box or 0 labels and one box (x1 = 1 > x2 = 0): the labels win
    dl = parse_datalist_text("i.png 1 0 0 1 1\n", min_boxes=0)
    assert (dl.att_num, dl.bbox_num) == (5, 0)
    dl = parse_datalist_text("i.png 1 0 1 0 1 0 1 0 0 1 0 0 5 6 0.5\n")  # 10 labels, first box starts "0 0"
    assert (dl.att_num, dl.bbox_num) == (10, 1)
    assert parse_datalist_text("i.png 1 0 0 1 1\n", att_num=0).bbox_num == 1
    with pytest.raises(DatalistError, match="0 proposal boxes per line"):
        parse_datalist_text("i.png 1 0 0 1 1\n")
    with pytest.raises(DatalistError, match=r"cannot infer the label count: .* state the label count"):
        parse_datalist_text("i.png 2 3 4\n")


def _lines(rng, n_lines, att, boxes, extra="", labels=None):
    """Datalist lines with realistic proposals (x1 < x2, y1 < y2 in a 672 frame, scores in (0, 1))."""
    out = []
    for k in range(n_lines):
        lab = labels[k] if labels is not None else rng.integers(0, 2, att)
        xy = rng.uniform(0, 500, (boxes, 2))
        b = np.concatenate([xy, xy + rng.uniform(5, 170, (boxes, 2)), rng.uniform(0.01, 1, (boxes, 1))], 1)
        out.append(f"img{k}.jpg " + " ".join(str(int(v)) for v in lab) + " "
                   + " ".join(f"{v:.2f}" for v in b.reshape(-1)) + extra + "\n")
    return out


def test_three_stray_numbers_on_every_line_are_an_error_not_a_layout():
    rng = np.random.default_rng(0)
    text = "".join(_lines(rng, 6, 4, 5, extra=" 7 8 9"))
    with pytest.raises(DatalistError, match="3 more than whole boxes of 5") as e:
        parse_datalist_text(text, "l.txt")
    assert e.value.line == 1 and "state the label count (--num-classes, att_num)" in str(e.value)
    with pytest.raises(DatalistError, match="att_num=4\\): 3 fields left over"):
        parse_datalist_text(text, "l.txt", att_num=4)
    with pytest.raises(DatalistError, match="wrong number of fields: 33, expected 30"):
        parse_datalist_text(text, "l.txt", att_num=4, bbox_num=5)


def test_labels_written_as_decimals_are_read_as_labels():
    rng = np.random.default_rng(1)
    lines = _lines(rng, 4, 3, 2)
    text = "".join(ln.replace(" 1 ", " 1.0 ").replace(" 0 ", " 0.0 ") for ln in lines)
    assert " 1.0 " in text or " 0.0 " in text
    dl = parse_datalist_text(text)
    ref = parse_datalist_text("".join(lines))
    assert (dl.att_num, dl.bbox_num) == (3, 2)
    np.testing.assert_array_equal(dl.labels, ref.labels)
    np.testing.assert_array_equal(dl.boxes, ref.boxes)


def test_a_first_box_of_0_1_values():
    rng = np.random.default_rng(2)
    lines = _lines(rng, 5, 4, 3, labels=[[1, 0, 1, 0], [0, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 1], [1, 0, 0, 1]])
    toks = lines[2].split()
    lines[2] = " ".join(toks[:5] + ["0", "0", "1", "1", "1"] + toks[10:]) + "\n"  # a 2 x 2 box, score 1
    dl = parse_datalist_text("".join(lines))  # the other lines decide: 4 labels
    assert (dl.att_num, dl.bbox_num) == (4, 3)
    np.testing.assert_array_equal(dl.boxes[2, 0], [0, 0, 1, 1, 1])
    # on every line it cannot be told from 9 labels + 2 boxes: refused, unless the count is given
    every = [" ".join(ln.split()[:5] + ["0", "0", "1", "1", "1"] + ln.split()[10:]) + "\n" for ln in lines]
    with pytest.raises(DatalistError, match="every line reads as 9 labels \\+ 2 boxes or as 4 labels \\+ 3 boxes"):
        parse_datalist_text("".join(every))
    assert parse_datalist_text("".join(every), att_num=4).bbox_num == 3


def test_sparse_trailing_labels_are_not_taken_for_a_box():
    # 80 labels, the last ones 0 on every line: 75 labels + a box (0, 0, 0, 0, 0) fits too,
    # but an all-zero block is read as labels
    rng = np.random.default_rng(3)
    labels = (rng.random((8, 80)) < 0.1).astype(int)
    labels[:, 70:] = 0
    dl = parse_datalist_text("".join(_lines(rng, 8, 80, 4, labels=labels)))
    assert (dl.att_num, dl.bbox_num) == (80, 4)
    np.testing.assert_array_equal(dl.labels, labels)


def test_inference_is_logged(caplog):
    rng = np.random.default_rng(4)
    with caplog.at_level("INFO", logger="mlic.data"):
        parse_datalist_text("".join(_lines(rng, 3, 4, 2)), "x.txt")
    assert "x.txt: no label count given; read as 4 labels + 2 boxes per line (inferred from 3 of 3 lines" \
        in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="mlic.data"):
        parse_datalist_text("".join(_lines(rng, 3, 4, 2)), "x.txt", att_num=4)
    assert "inferred" not in caplog.text


@pytest.mark.parametrize("bad_line", [1, 4])
def test_errors_blame_the_odd_line_not_the_first(bad_line):
    rng = np.random.default_rng(5)
    lines = _lines(rng, 6, 4, 3)
    toks = lines[bad_line - 1].split()
    lines[bad_line - 1] = " ".join(toks[:3] + ["2"] + toks[4:]) + "\n"  # label 3 = 2
    with pytest.raises(DatalistError, match=r"field 4 \(label 3\) must be 0 or 1, got '2'") as e:
        parse_datalist_text("".join(lines), "l.txt")
    assert e.value.line == bad_line
    lines = _lines(rng, 6, 4, 3)
    lines[bad_line - 1] = lines[bad_line - 1].rstrip("\n") + " 0.5\n"  # one field too many
    with pytest.raises(DatalistError, match="wrong number of fields: 21, expected 20") as e:
        parse_datalist_text("".join(lines), "l.txt")
    assert e.value.line == bad_line


def test_lines_disagreeing_evenly_are_ambiguous():
    rng = np.random.default_rng(6)
    a = _lines(rng, 2, 4, 3)
    b = [" ".join(ln.split()[:5] + ["1", "0", "0", "1", "1"] + ln.split()[10:]) + "\n" for ln in _lines(rng, 2, 4, 3)]
    # lines a read as 4 labels + 3 boxes; lines b (box 1 of 0/1 values, x1 > x2 as a box) as 9 + 2
    with pytest.raises(DatalistError, match=r"as many lines \(2\) read as (4|9) labels"):
        parse_datalist_text("".join(a + b))


@pytest.mark.parametrize("counts", [(4, 3), (4, None), (None, None)])
def test_coordinates_beyond_float32_integers_name_the_line(counts):
    rng = np.random.default_rng(7)
    lines = _lines(rng, 4, 4, 3)
    toks = lines[2].split()
    toks[1 + 4 + 5 + 2] = "1e12"  # box 2 x2
    lines[2] = " ".join(toks) + "\n"
    with pytest.raises(DatalistError, match=r"field 13 \(box 2 x2\) is '1e12', beyond \+-16777216") as e:
        parse_datalist_text("".join(lines), "l.txt", att_num=counts[0], bbox_num=counts[1])
    assert e.value.line == 3


def test_zero_boxes_are_an_error_naming_the_list():
    with pytest.raises(DatalistError, match="0 proposal boxes per line") as e:
        parse_datalist_text("a.jpg 1 0 1\nb.jpg 0 0 1\n", "l.txt", att_num=3)
    assert e.value.line == 1
    assert parse_datalist_text("a.jpg 1 0 1\n", att_num=3, min_boxes=0).bbox_num == 0
    with pytest.raises(ValueError, match="bbox_num=0 is below min_boxes=1"):
        parse_datalist_text("a.jpg 1 0 1\n", att_num=3, bbox_num=0)


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
    if any(abs(v) > 2 ** 24 for k, v in enumerate(vals[att:]) if k % 5 != 4):  # coordinates, not scores
        return None
    return vals[:att], np.float32(vals[att:])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_tokens, min_size=0, max_size=14), st.sampled_from([(2, 1), (0, 2), (3, 0)]))
def test_fuzz_lines(tokens, counts):
    att, box = counts
    line = " ".join(["img.png"] + tokens)
    text = "ok.png " + " ".join(["1"] * att + ["1", "2", "3", "4", "0.5"] * box) + "\n" + line + "\n"
    try:
        dl = parse_datalist_text(text, "f.txt", att_num=att, bbox_num=box, min_boxes=0)
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
        dl = parse_datalist_text(text, "f.txt", min_boxes=0)
    except DatalistError:
        return
    assert dl.labels.shape == (len(dl), dl.att_num)
    assert dl.boxes.shape == (len(dl), dl.bbox_num, 5)
    assert np.isfinite(dl.boxes).all()


def test_format_line_rejects_spaces():
    assert format_line("a.jpg", [1, 0], np.array([[1, 2, 3, 4, 0.5]])) == "a.jpg 1 0 1.00 2.00 3.00 4.00 0.5000"
    with pytest.raises(ValueError, match="whitespace"):
        format_line("my pic.jpg", [1], np.zeros((1, 5)))
