"""Photos at real scale: stored larger than trained, random-resized crops, streamed batches."""

import numpy as np
import pytest
import torch
from test_train import recipe, toy_data, train_one

from distillery.core.config import AugmentConfig, TrainConfig
from distillery.data import Prepared, Split
from distillery.recipe.augment import BatchAugment, Normalizer, center_crop, draw_crop_boxes, resized_crop
from distillery.training.batches import DeviceBatches, StreamedBatches, batch_source
from distillery.recipe.models import ModelSpec, state_digest

CPU = torch.device("cpu")


def stored_large(n_per_class=16, classes=3, stored=20, size=16, seed=0):
    """toy_data-like images stored at `stored` px, trained at `size`."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 255, (n_per_class * classes, 3, stored, stored), dtype=np.uint8)
    y = np.repeat(np.arange(classes), n_per_class)
    for i, c in enumerate(y):
        x[i, c % 3, 4:12, 4:12] = 250
    splits = {"train": Split(x[8:], y[8:]), "val": Split(x[:8], y[:8])}
    return Prepared(splits, [str(c) for c in range(classes)], [0.5] * 3, [0.25] * 3, size)


def test_random_resized_crop_boxes_follow_deits_rule():
    gen = torch.Generator().manual_seed(0)
    boxes = draw_crop_boxes((50, 40), 72, 72, (0.25, 1.0), (0.75, 4 / 3), gen)
    top, left, h, w = boxes.unbind(-1)
    assert boxes.shape == (50, 40, 4)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 72).all() and (left + w <= 72).all()
    area = h * w / 72**2
    assert area.min() >= 0.25 - 0.03 and area.max() <= 1.0  # rounding to whole pixels moves the area slightly
    ratio = w / h
    assert ratio.min() >= 0.75 - 0.05 and ratio.max() <= 4 / 3 + 0.05
    assert area.std() > 0.1 and top.float().std() > 1  # really random, not a fixed crop


def test_a_crop_range_no_box_fits_falls_back_to_the_whole_image():
    boxes = draw_crop_boxes((5,), 10, 40, (1.0, 1.0), (1.0, 1.0), torch.Generator().manual_seed(0))
    # a square of the whole area (400 px) never fits a 10 x 40 image: torchvision's fallback is the
    # whole image clamped to the ratio range, i.e. the centre-most... here a 10 x 10 square at a random column
    assert (boxes[:, 2] == 10).all() and (boxes[:, 3] == 10).all()


def test_resized_crop_is_the_crop_when_no_resizing_is_needed():
    x = torch.arange(2 * 3 * 12 * 12, dtype=torch.float32).reshape(2, 3, 12, 12)
    boxes = torch.tensor([[2.0, 3.0, 8.0, 8.0], [0.0, 0.0, 8.0, 8.0]])
    out = resized_crop(x, boxes, 8)
    assert torch.allclose(out[0], x[0, :, 2:10, 3:11], atol=1e-3)
    assert torch.allclose(out[1], x[1, :, :8, :8], atol=1e-3)


def test_resized_crop_scales_a_half_box_to_the_full_size():
    x = torch.zeros(1, 1, 16, 16)
    x[..., :8, :8] = 1.0  # the top-left quarter is white
    out = resized_crop(x, torch.tensor([[0.0, 0.0, 8.0, 8.0]]), 16)  # that quarter, blown up
    assert out[..., 1:-1, 1:-1].min() > 0.99


def test_evaluation_sees_the_centre_crop_of_a_larger_stored_image():
    x = torch.arange(20 * 20, dtype=torch.uint8).reshape(1, 1, 20, 20)
    norm = Normalizer([0.0], [1.0], CPU, 16)
    assert torch.equal(norm(x), x[..., 2:18, 2:18].float() / 255)
    assert torch.equal(center_crop(x, 20), x) and torch.equal(center_crop(x, None), x)


def test_a_shift_on_a_larger_stored_image_is_a_random_crop_of_real_pixels():
    """Keras' seed: store 244, shift up to 10, crop 224: every pixel comes from the image, none from padding."""
    data = stored_large(stored=20, size=16)
    norm = Normalizer(data.mean, data.std, CPU, 16)
    aug = BatchAugment(AugmentConfig(translate=2), 3, 0.0, norm, CPU, stored_size=20)
    x = torch.from_numpy(np.array(data.splits["train"].x[:4]))
    draws = aug.draw(1, 4, torch.Generator().manual_seed(1))
    out, _ = aug(x, torch.zeros(4, dtype=torch.long), {k: v[0] for k, v in draws.items()})
    full = norm.scale(x)
    for i, (dr, dc) in enumerate(draws["offsets"][0].tolist()):
        assert torch.equal(out[i], full[i, :, dr:dr + 16, dc:dc + 16])


def test_streamed_batches_equal_device_batches():
    x = np.random.default_rng(0).integers(0, 255, (37, 3, 6, 6), dtype=np.uint8)
    perm = torch.randperm(37, generator=torch.Generator().manual_seed(3))
    device = list(DeviceBatches(x, CPU)(perm, 4, 9))
    streamed = list(StreamedBatches(x, CPU, prefetch=2)(perm, 4, 9))
    assert len(device) == len(streamed) == 4
    assert all(torch.equal(a, b) for a, b in zip(device, streamed))


def test_leaving_a_streamed_epoch_early_stops_its_reader():
    import threading

    x = np.zeros((64, 1, 4, 4), dtype=np.uint8)
    batches = StreamedBatches(x, CPU, prefetch=1)(torch.arange(64), 16, 4)
    next(batches)
    batches.close()  # a pruned trial leaves the epoch here
    assert not any(t.name == "distillery-batches" for t in threading.enumerate())


def test_a_read_error_in_the_reader_reaches_the_training_loop():
    class Broken(np.ndarray):
        def __getitem__(self, idx):
            raise OSError("disk gone")

    x = np.zeros((8, 1, 4, 4), dtype=np.uint8).view(Broken)
    with pytest.raises(OSError, match="disk gone"):
        list(StreamedBatches(x, CPU)(torch.arange(8), 2, 4))


def test_device_cache_auto_streams_only_what_does_not_fit(capsys):
    x = np.zeros((1024, 1, 32, 32), dtype=np.uint8)  # 1 MB
    assert not batch_source(x, CPU, TrainConfig(device_cache_mb=2)).streamed
    assert batch_source(x, CPU, TrainConfig(device_cache_mb=0.5)).streamed
    assert "1 MB > train.device_cache_mb=0.5" in capsys.readouterr().out
    assert batch_source(x, CPU, TrainConfig(device_cache="off")).streamed
    assert not batch_source(x, CPU, TrainConfig(device_cache="on", device_cache_mb=0)).streamed


@pytest.mark.slow
@pytest.mark.parametrize("augment", [
    AugmentConfig(translate=0, random_resized_crop=True, hflip=True, random_erasing=0.25),
    AugmentConfig(translate=2),
])
def test_streaming_and_the_device_copy_train_the_same_model(augment):
    """The whole fit, both paths: identical weights and history (up to wall time)."""
    data = stored_large()
    spec = ModelSpec("baseline", "vit_tiny_patch16_224", {"img_size": 16, "patch_size": 4, "embed_dim": 32,
                                                         "depth": 1, "num_heads": 2, "in_chans": 3, "num_classes": 3})
    results = []
    for mode in ("on", "off"):
        net = spec.build(0)
        hist = train_one(net, data, recipe(epochs=2, augment=augment, mixing=0.8, batch_size=8, device_cache=mode),
                   progress=False)
        results.append((state_digest(net), [{k: v for k, v in h.items() if k != "epoch_seconds"} for h in hist]))
    assert results[0] == results[1]


def test_a_model_sees_the_training_size_not_the_stored_size():
    data = stored_large(stored=20, size=16)
    assert data.image_size == 16 and data.storage_size == 20
    same_pixels_other_size = Prepared(data.splits, data.classes, data.mean, data.std, 12)
    assert same_pixels_other_size.fingerprint() != data.fingerprint()
    assert toy_data().image_size == toy_data().storage_size == 8
