"""HumanAttData layer: Caffe's outputs, box rules, order, shuffling, workers and sharding."""
import json
from collections import Counter

import cv2
import numpy as np
import pytest
import torch

from mlic.caffe.io import load_net_spec
from mlic.caffe.layers import human_att_data_config
from mlic.data import (BatchSpec, HumanAttBatch, HumanAttBatchSampler, HumanAttDataConfig, HumanAttDataset,
                       build_loader, read_datalist)
from mlic.data.human_att_data import pixels_to_data
from tests.conftest import DEVICES
from mlic.data.transforms import mirror_boxes, scale_boxes, scaled_size

MEAN = (103.52, 116.28, 123.675)


# ----------------------------------------------------------------------------------
# Caffe reference


def test_matches_caffe_data_layer(caffe_ref):
    ref = np.load(caffe_ref / "data_layer.npz")
    meta = json.loads(str(ref["meta"]))
    assert "no shuffle, no mirror" in meta["note"]
    images = caffe_ref / "data_layer_images"
    for case in ("plain", "scaled"):
        layer = load_net_spec(str(ref[f"{case}/prototxt"])).param.layer[0]
        loader = build_loader(human_att_data_config(layer), base_dir=str(images))
        cfg = loader.config
        assert cfg.batch_size == 2 and not cfg.shuffle and not cfg.mirror
        if case == "scaled":
            # One factor listed, so the draw is forced; the meta records what Caffe used.
            assert cfg.scale_factors == (meta["scale_factor"],)
        for step, batch in enumerate(loader.iter_steps(0, 2)):
            want_data = ref[f"{case}/batch{step}/data"]
            want_lr = ref[f"{case}/batch{step}/label_roi"]
            assert batch.data.dtype == torch.float32 and batch.data.shape == want_data.shape
            assert np.array_equal(batch.data.numpy(), want_data), (case, step)
            assert np.array_equal(batch.label_roi.numpy(), want_lr), (case, step)
        # the second batch wrapped to the start of the 3-image list
        assert batch.indices.tolist() == [2, 0]


# ----------------------------------------------------------------------------------
# Box rules against hand-computed values


def test_scale_boxes_truncation_hand_values():
    boxes = np.float32([[19.81, 9.32, 24.78, 19.59, 0.0084], [0.99, 1.0, 47.5, 39.9, 0.3]])
    got = scale_boxes(boxes, 0.75)
    # int(int(19.81)*0.75) = int(14.25) = 14; int(9*0.75)=6; int(24*0.75)=18; int(19*0.75)=14
    np.testing.assert_array_equal(got[0], np.float32([14, 6, 18, 14, 0.0084]))
    np.testing.assert_array_equal(got[1], np.float32([0, 0, 35, 29, 0.3]))
    # f == 1 keeps the fractional boxes as read
    np.testing.assert_array_equal(scale_boxes(boxes, 1.0), boxes)
    # float arithmetic as Caffe: 10 * 0.7f rounds to 7.0f, so int() gives 7
    assert scale_boxes(np.float32([[10, 10, 10, 10, 1]]), 0.7)[0, 0] == 7


def test_released_scale_sizes():
    got = [scaled_size(672, 672, f)[0] for f in (0.714286, 0.857143, 1.0, 1.095239, 1.238096)]
    assert got == [480, 576, 672, 736, 832]


def test_mirror_boxes_hand_values():
    boxes = np.float32([[10.7, 3.5, 20.2, 9.25, 0.5], [0, 0, 47, 39, 1]])
    got = mirror_boxes(boxes, 48)
    # x1' = 48 - int(20.2) - 1 = 27, x2' = 48 - int(10.7) - 1 = 37; y untouched
    np.testing.assert_array_equal(got[0], np.float32([27, 3.5, 37, 9.25, 0.5]))
    np.testing.assert_array_equal(got[1], np.float32([0, 0, 47, 39, 1]))


def _make_images(tmp_path, sizes, seed=0, att=2, box=3, boxes=None):
    rng = np.random.default_rng(seed)
    lines = []
    for k, (w, h) in enumerate(sizes):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        cv2.imwrite(str(tmp_path / f"im{k}.png"), img)
        lab = " ".join(str(int(v)) for v in rng.integers(0, 2, att))
        bx = boxes[k] if boxes is not None else [[rng.uniform(0, 20), rng.uniform(0, 10), rng.uniform(20, 30),
                                                  rng.uniform(10, 19), rng.uniform()] for _ in range(box)]
        lines.append(f"im{k}.png {lab} " + " ".join(f"{v:.4f}" for b in bx for v in b))
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    return tmp_path / "list.txt"


def test_scaled_and_mirrored_batch_hand_computed(tmp_path):
    src = _make_images(tmp_path, [(50, 30), (17, 41)], boxes=[[[10.7, 3.5, 20.2, 9.25, 0.5]],
                                                             [[1.2, 2.9, 31.99, 18.0, 0.25]]], box=1)
    cfg = HumanAttDataConfig(source=str(src), root_folder=str(tmp_path) + "/", batch_size=2,
                             new_width=32, new_height=20, mean_values=MEAN, scale=0.5, att_num=2, bbox_num=1)
    ds = HumanAttDataset.from_config(cfg)
    b = ds.load_batch([0, 1], scale=0.5, mirror=[True, False])
    assert b.data.shape == (2, 3, 10, 16)
    for j, k in enumerate((0, 1)):
        img = cv2.imread(str(tmp_path / f"im{k}.png"))
        img = cv2.resize(cv2.resize(img, (32, 20), interpolation=cv2.INTER_LINEAR), (16, 10),
                         interpolation=cv2.INTER_LINEAR)
        if j == 0:
            img = img[:, ::-1]
        want = (img.astype(np.float32) - np.float32(MEAN)) * np.float32(0.5)
        assert np.array_equal(b.data[j].numpy(), want.transpose(2, 0, 1))
    # image 0: scale int(int(x)*0.5): (5, 1, 10, 4), then mirror in width 16: x1'=16-10-1=5, x2'=16-5-1=10
    np.testing.assert_array_equal(b.boxes[0, 0].numpy(), np.float32([5, 1, 10, 4, 0.5]))
    # image 1: (0, 1, 15, 9), not mirrored
    np.testing.assert_array_equal(b.boxes[1, 0].numpy(), np.float32([0, 1, 15, 9, 0.25]))
    rois = b.rois.numpy()
    np.testing.assert_array_equal(rois, np.float32([[0, 5, 1, 10, 4, 0.5], [1, 0, 1, 15, 9, 0.25]]))
    assert b.labels.shape == (2, 2) and b.list_roi.shape == (2, 5)


def test_rois_layout_image_major(tmp_path):
    src = _make_images(tmp_path, [(20, 20)] * 3, box=4)
    cfg = HumanAttDataConfig(source=str(src), root_folder=str(tmp_path) + "/", batch_size=3,
                             new_width=20, new_height=20)
    b = HumanAttDataset.from_config(cfg).load_batch([2, 0, 1])
    rois = b.rois
    assert rois.shape == (12, 6)
    assert rois[:, 0].tolist() == [0.0] * 4 + [1.0] * 4 + [2.0] * 4
    dl = read_datalist(src, check_files="none")
    np.testing.assert_array_equal(rois[4:8, 1:].numpy(), dl.boxes[0])


# ----------------------------------------------------------------------------------
# Order, wrap-around, shuffling


def test_wrap_around_without_shuffle():
    s = HumanAttBatchSampler(3, 2)
    assert [s.batch(k).indices for k in range(4)] == [(0, 1), (2, 0), (1, 2), (0, 1)]
    assert len(s) == 2 and [b.indices for b in s] == [(0, 1), (2, 0)]
    s.set_epoch(1)
    assert [b.indices for b in s] == [(1, 2), (0, 1)]


def test_shuffle_is_seeded_and_reshuffles_each_pass():
    n, bs = 7, 3
    a = HumanAttBatchSampler(n, bs, shuffle=True, seed=5)
    b = HumanAttBatchSampler(n, bs, shuffle=True, seed=5)
    c = HumanAttBatchSampler(n, bs, shuffle=True, seed=6)
    seq_a = [a.batch(k).indices for k in range(20)]
    assert seq_a == [b.batch(k).indices for k in range(20)]
    assert seq_a != [c.batch(k).indices for k in range(20)]
    stream = [i for t in seq_a for i in t]
    passes = [stream[p * n:(p + 1) * n] for p in range(len(stream) // n)]
    assert all(sorted(p) == list(range(n)) for p in passes)  # each pass is a permutation
    assert len({tuple(p) for p in passes}) > 1  # reshuffled when wrapping
    # the stream continues across the wrap inside one batch (always-full batches)
    assert all(len(t) == bs for t in seq_a)


def test_scale_draw_once_per_batch_and_seeded(tmp_path):
    src = _make_images(tmp_path, [(30, 20), (25, 25), (20, 30), (40, 10)], box=2)
    cfg = HumanAttDataConfig(source=str(src), root_folder=str(tmp_path) + "/", batch_size=3, new_width=24,
                             new_height=16, scale_factors=(0.5, 1.0, 1.5), mirror=True, shuffle=True)
    s1 = build_loader(cfg, seed=3).sampler
    s2 = build_loader(cfg, seed=3).sampler
    specs = [s1.batch(k) for k in range(40)]
    assert specs == [s2.batch(k) for k in range(40)]
    assert {sp.scale for sp in specs} == {0.5, 1.0, 1.5}
    flags = [f for sp in specs for f in sp.mirror]
    assert 0.3 < np.mean(flags) < 0.7
    ds = HumanAttDataset.from_config(cfg)
    for sp in specs[:6]:
        b = ds[sp]
        w, h = scaled_size(24, 16, sp.scale)
        assert b.data.shape == (3, 3, h, w) and b.scale == sp.scale


def test_explicit_batch_specs_and_scale_schedule(tmp_path):
    src = _make_images(tmp_path, [(30, 20)] * 3, box=1)
    cfg = HumanAttDataConfig(source=str(src), root_folder=str(tmp_path) + "/", batch_size=2, new_width=24,
                             new_height=16, scale_factors=(0.5, 1.0), mirror=True)
    loader = build_loader(cfg, scale_schedule=[1.0, 0.5])
    assert [s.scale for s in (loader.sampler.batch(k) for k in range(4))] == [1.0, 0.5, 1.0, 0.5]
    ds = loader.dataset
    plan = [BatchSpec((2, 1), 0.5, (True, False)), BatchSpec((0, 0), 1.0, (False, True))]
    out = list(torch.utils.data.DataLoader(ds, sampler=plan, batch_size=None))
    assert out[0].indices.tolist() == [2, 1] and out[0].mirrored.tolist() == [True, False]
    assert out[1].data.shape[2:] == (16, 24)
    assert torch.equal(out[1].data[0], out[1].data[1].flip(-1))


# ----------------------------------------------------------------------------------
# Workers and sharding


def _tiny_config(tmp_path, n=10, **kw):
    src = _make_images(tmp_path, [(20 + k, 24 - k) for k in range(n)], box=2)
    base = dict(source=str(src), root_folder=str(tmp_path) + "/", batch_size=3, new_width=16, new_height=12,
                scale_factors=(0.75, 1.0, 1.25), mirror=True, shuffle=True, mean_values=MEAN)
    base.update(kw)
    return HumanAttDataConfig(**base)


@pytest.mark.parametrize("share_min_bytes", [1 << 20, 0])
def test_workers_give_identical_batches(tmp_path, monkeypatch, share_min_bytes):
    # share_min_bytes 0: the datalist's arrays travel to the workers in shared memory
    from mlic.data.datalist import Datalist

    monkeypatch.setattr(Datalist, "_SHARE_MIN_BYTES", share_min_bytes)
    cfg = _tiny_config(tmp_path)
    ref = build_loader(cfg, seed=11, num_workers=0)
    par = build_loader(cfg, seed=11, num_workers=2)
    for epoch in (0, 1):
        ref.set_epoch(epoch)
        par.set_epoch(epoch)
        a, b = list(ref), list(par)
        assert len(a) == len(b) == 4
        for x, y in zip(a, b):
            assert torch.equal(x.data, y.data) and torch.equal(x.label_roi, y.label_roi)
            assert x.indices.tolist() == y.indices.tolist() and x.scale == y.scale


def test_datalist_pickles_with_and_without_shared_memory(tmp_path, monkeypatch):
    import io
    import pickle

    import torch.multiprocessing  # noqa: F401  (registers the tensor reductions)
    from multiprocessing.reduction import ForkingPickler

    from mlic.data.datalist import Datalist

    src = _make_images(tmp_path, [(20, 20)] * 4, box=3)
    dl = read_datalist(src, check_files="none")
    monkeypatch.setattr(Datalist, "_SHARE_MIN_BYTES", 0)
    buf = io.BytesIO()
    ForkingPickler(buf, pickle.HIGHEST_PROTOCOL).dump(dl)
    back = pickle.loads(buf.getvalue())
    plain = pickle.loads(pickle.dumps(dl))
    for other in (back, plain):
        assert isinstance(other.boxes, np.ndarray) and other.paths == dl.paths
        np.testing.assert_array_equal(other.boxes, dl.boxes)
        np.testing.assert_array_equal(other.labels, dl.labels)
    assert "_shm" not in plain.__dict__


def test_sharded_ranks_are_disjoint_and_cover_the_global_batch(tmp_path):
    cfg = _tiny_config(tmp_path, n=11)
    world = 2
    ranks = [build_loader(cfg, seed=4, num_replicas=world, rank=r) for r in range(world)]
    single = build_loader(HumanAttDataConfig(**{**cfg.__dict__, "batch_size": cfg.batch_size * world}), seed=4)
    for epoch in (0, 1):
        for ld in ranks + [single]:
            ld.set_epoch(epoch)
        per_rank = [list(ld.sampler) for ld in ranks]
        glob = list(single.sampler)
        assert len(glob) == len(per_rank[0]) == 2
        for k, g in enumerate(glob):
            parts = [pr[k] for pr in per_rank]
            assert parts[0].indices + parts[1].indices == g.indices  # disjoint slices of the global batch
            assert parts[0].mirror + parts[1].mirror == g.mirror
            assert parts[0].scale == parts[1].scale == g.scale  # one factor per global step
        # the same multiset of images per epoch, also through workers
        loaded = Counter(i for ld in ranks for b in ld for i in b.indices.tolist())
        assert loaded == Counter(i for g in glob for i in g.indices)
    ranks[1].set_epoch(0)
    via_workers = build_loader(cfg, seed=4, num_replicas=world, rank=1, num_workers=2)
    assert Counter(i for b in via_workers for i in b.indices.tolist()) == \
        Counter(i for sp in ranks[1].sampler for i in sp.indices)


def test_iter_steps_is_endless_and_resumable(tmp_path):
    cfg = _tiny_config(tmp_path, n=5)
    ld = build_loader(cfg, seed=1)
    it = ld.iter_steps(0, None)
    first = [next(it) for _ in range(7)]
    resumed = list(ld.iter_steps(4, 3))
    for a, b in zip(first[4:], resumed):
        assert torch.equal(a.data, b.data) and a.step == b.step


# ----------------------------------------------------------------------------------
# Config


def test_config_errors():
    with pytest.raises(ValueError, match="new_width"):
        HumanAttDataConfig(source="a", new_width=10)
    with pytest.raises(ValueError, match="scale_factors"):
        HumanAttDataConfig(source="a", scale_factors=(0.0,))
    with pytest.raises(ValueError, match="bbox_num=0: must be >= 1"):
        HumanAttDataConfig(source="a", bbox_num=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scale", [1.0, 0.017])
def test_pixels_to_data_exact_on_every_path(device, scale):
    g = torch.Generator().manual_seed(0)
    pix = torch.randint(0, 256, (3, 7, 9, 3), dtype=torch.uint8, generator=g)
    want = (pix.numpy().astype(np.float32) - np.float32(MEAN)) * np.float32(scale)
    want = want.transpose(0, 3, 1, 2)
    for use_numpy in ([True, False] if device == "cpu" else [False]):
        got = pixels_to_data(pix.to(device), MEAN, scale, use_numpy=use_numpy)
        assert got.shape == (3, 3, 7, 9) and got.is_contiguous()
        assert np.array_equal(got.cpu().numpy(), want), (device, use_numpy)
    # a batch moved to the device computes its blob there
    b = HumanAttBatch(pixels=pix, label_roi=torch.zeros(3, 5), att_num=0, bbox_num=1, indices=torch.arange(3),
                      mirrored=torch.zeros(3, dtype=torch.bool), mean_values=MEAN, pixel_scale=scale)
    moved = b.to(device)
    assert moved.data.device.type == device and np.array_equal(moved.data.cpu().numpy(), want)
    if torch.cuda.is_available():  # pinning needs a CUDA runtime
        assert np.array_equal(b.pin_memory().data.numpy(), want)


def test_image_cache_gives_the_same_batches_and_decodes_each_image_once(tmp_path, monkeypatch):
    """image_cache_mb keeps decoded images in memory: the batches are those of the loader
    without it, later epochs read no file, and the cache holds no more than its budget."""
    from mlic.data import human_att_data

    reads = []
    real = human_att_data.read_image_bgr
    monkeypatch.setattr(human_att_data, "read_image_bgr", lambda path: reads.append(path) or real(path))
    cfg = _tiny_config(tmp_path)
    plain, cached = build_loader(cfg, seed=5), build_loader(cfg, seed=5, image_cache_mb=1)
    for epoch in (0, 1, 2):
        plain.set_epoch(epoch)
        cached.set_epoch(epoch)
        reads.clear()
        a = list(plain)
        plain_reads = len(reads)
        reads.clear()
        b = list(cached)
        for x, y in zip(a, b):
            assert torch.equal(x.data, y.data) and torch.equal(x.label_roi, y.label_roi)
        assert plain_reads == 12
        assert len(reads) == (10 if epoch == 0 else 0)  # 10 distinct images among the 12 of a pass
    # a budget of one image: the first image read is kept, the others are read every time
    one = 16 * 12 * 3
    small = human_att_data.HumanAttDataset.from_config(cfg)
    small._cache_left = one
    img = small.read_image(0)
    assert not img.flags.writeable  # cached images are shared: nobody may change them
    reads.clear()
    small.read_image(0), small.read_image(1), small.read_image(1)
    assert len(reads) == 2 and len(small._cache) == 1
    with pytest.raises(ValueError, match="image_cache_mb must be >= 0"):
        build_loader(cfg, image_cache_mb=-1)


# ----------------------------------------------------------------------------------
# Truncated JPEGs: libjpeg decodes them with a warning, the missing rows grey


@pytest.mark.parametrize("progressive", [0, 1])
def test_a_jpeg_cut_short_is_unreadable(tmp_path, progressive):
    from mlic.data.transforms import jpeg_truncated, read_image_bgr

    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur((rng.random((96, 128, 3)) * 255).astype(np.uint8), (5, 5), 0)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_PROGRESSIVE, progressive])
    data = buf.tobytes()
    assert ok and not jpeg_truncated(data)
    assert not jpeg_truncated(data + b"trailing bytes \xff\xd8 after the end marker")
    for keep in (0.4, 0.9, (len(data) - 2) / len(data)):
        cut = data[: int(len(data) * keep)]
        assert jpeg_truncated(cut), keep
        (tmp_path / "cut.jpg").write_bytes(cut)
        assert read_image_bgr(str(tmp_path / "cut.jpg")) is None
    (tmp_path / "cut.jpg").write_bytes(data[: int(len(data) * 0.9)])
    assert cv2.imread(str(tmp_path / "cut.jpg")) is not None  # what the check is there for
    (tmp_path / "whole.jpg").write_bytes(data + b"\0\0")
    np.testing.assert_array_equal(read_image_bgr(str(tmp_path / "whole.jpg")), cv2.imread(str(tmp_path / "whole.jpg")))
