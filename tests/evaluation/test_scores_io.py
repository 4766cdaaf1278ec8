"""Per-image score files round-trip exactly and reject malformed input with file and line."""
import numpy as np
import pytest
import torch

from mlic.evaluation import load_scores, save_scores

PATHS = ["val/img 1.jpg", "val/a,b.jpg", 'val/"quoted".jpg']


@pytest.mark.parametrize("suffix", [".csv", ".npz"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip(tmp_path, suffix, dtype):
    rng = np.random.default_rng(0)
    scores = rng.random((3, 4)).astype(dtype)
    scores[0, 0] = 1e-30
    labels = np.array([[1, 0, 0, 1], [0, 0, 0, 0], [1, 1, 1, 1]])
    out = save_scores(tmp_path / f"s{suffix}", PATHS, scores, labels, ["person", "dog", "traffic light", "cat"])
    assert out == tmp_path / f"s{suffix}" and out.is_file()
    back = load_scores(out)
    assert back.paths == PATHS
    assert back.scores.dtype == np.float64
    np.testing.assert_array_equal(back.scores, scores.astype(np.float64))  # exact
    np.testing.assert_array_equal(back.labels, labels)
    assert back.class_names == ["person", "dog", "traffic light", "cat"]


@pytest.mark.parametrize("suffix", [".csv", ".npz"])
def test_without_labels_and_names(tmp_path, suffix):
    scores = torch.tensor([[0.25, 0.5], [0.75, 1.0]])
    back = load_scores(save_scores(tmp_path / f"s{suffix}", ["a.jpg", "b.jpg"], scores))
    assert back.labels is None
    assert back.class_names == ["class_0", "class_1"]
    np.testing.assert_array_equal(back.scores, [[0.25, 0.5], [0.75, 1.0]])


def test_csv_layout(tmp_path):
    p = save_scores(tmp_path / "s.csv", ["x.jpg"], [[0.5, 0.25]], [[1, 0]], ["a", "b"])
    assert p.read_text().splitlines() == ["image,a,b,label:a,label:b", "x.jpg,0.5,0.25,1,0"]


def test_malformed_csv_names_file_and_line(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("image,a,b\nx.jpg,0.1,0.2\ny.jpg,0.3\n")
    with pytest.raises(ValueError, match=r"bad\.csv:3: expected 3 fields, got 2"):
        load_scores(p)
    p.write_text("image,a,b\nx.jpg,0.1,zero\n")
    with pytest.raises(ValueError, match=r"bad\.csv:2: .*zero"):
        load_scores(p)
    p.write_text("path,a\n")
    with pytest.raises(ValueError, match=r"bad\.csv:1: expected a header"):
        load_scores(p)
    p.write_text("image,a,b,label:a\n")
    with pytest.raises(ValueError, match=r"bad\.csv:1"):
        load_scores(p)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown score file type"):
        save_scores(tmp_path / "s.txt", ["a"], [[0.1]])
    with pytest.raises(ValueError, match="image_paths: 1 paths for 2 rows"):
        save_scores(tmp_path / "s.csv", ["a"], [[0.1], [0.2]])
    with pytest.raises(ValueError, match="scores: .*non-finite"):
        save_scores(tmp_path / "s.csv", ["a"], [[np.nan]])
    with pytest.raises(ValueError, match="differ in shape"):
        save_scores(tmp_path / "s.npz", ["a"], [[0.1, 0.2]], [[1]])
    with pytest.raises(ValueError, match="class_names"):
        save_scores(tmp_path / "s.npz", ["a"], [[0.1, 0.2]], class_names=["x"])
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_scores(tmp_path / "missing.npz")
