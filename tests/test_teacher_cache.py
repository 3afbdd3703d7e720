"""The view stream and the teacher cache: a cached run is bitwise the live run, and the cache is read."""

import random

import numpy as np
import pytest
import torch

from distillery.core.config import AugmentConfig, Params
from distillery.core.files import Best
from distillery.core.paths import Layout
from distillery.recipe.augment import BatchAugment, Normalizer
from distillery.training.loop import seed_everything
from distillery.recipe.losses import DistillLoss
from distillery.recipe.models import state_digest, vit_spec
from distillery.recipe.arm_runs import final_run, trial_run
from distillery.training.teacher_cache import cache_for
from distillery.training.teacher_cache import TeacherCache, TeacherLogits, open_teacher_logits, stream_key
from distillery.training.batches import DeviceBatches
from distillery.recipe.views import ViewStream
from test_train import STUDENT, recipe, toy_data, train_one

CPU = torch.device("cpu")
AUG = AugmentConfig(translate=2, hflip=True, random_erasing=0.5)  # draws from every generator timm uses


def views(view_seed, mixing=0.8, aug=AUG, batch=16):
    data = toy_data()
    norm = Normalizer(data.mean, data.std, CPU)
    augment = BatchAugment(aug, data.num_classes, 0.1, norm, CPU, mixing)
    x, y = DeviceBatches(data.splits["train"].x, CPU), torch.as_tensor(data.splits["train"].y)
    return ViewStream(view_seed, len(y), batch, augment, CPU), x, y


def teacher_net(seed=0):
    import timm

    torch.manual_seed(seed)
    return timm.create_model("distillery_cnn_small", in_chans=1, num_classes=3).eval()


def student(drop_path=0.1):  # drop path draws from the global generator: the views must not notice
    spec = vit_spec("s", STUDENT.model, 8, 1, 3, STUDENT, drop_path)
    return spec.build(0)


def test_views_depend_on_the_view_seed_and_nothing_else():
    stream, x, y = views(3)
    seed_everything(0)
    first = [b for b in stream.epoch(1, x, y)]
    seed_everything(99)  # another initialisation seed, and the model drawing from every global generator
    again = []
    for batch in stream.epoch(1, x, y):
        torch.rand(7), np.random.rand(3), random.random()
        again.append(batch)
    assert len(first) == len(again) == stream.steps
    for (xa, ta), (xb, tb) in zip(first, again):
        assert torch.equal(xa, xb) and torch.equal(ta, tb)
    other, _, _ = views(4)
    assert not torch.equal(next(iter(other.epoch(1, x, y)))[0], first[0][0])
    assert not torch.equal(next(iter(stream.epoch(2, x, y)))[0], first[0][0])


def test_the_view_stream_leaves_the_model_s_generators_where_they_were():
    stream, x, y = views(3)
    seed_everything(5)
    expected = torch.rand(4), np.random.rand(2), random.random()
    seed_everything(5)
    list(stream.epoch(0, x, y))
    assert torch.equal(torch.rand(4), expected[0]) and np.array_equal(np.random.rand(2), expected[1])
    assert random.random() == expected[2]


def test_every_arm_s_trials_share_one_view_stream_and_each_final_seed_owns_one():
    params, data = Params(student={"patch_size": 4}, data={"image_size": 8}), toy_data()
    hp = {"lr": 1e-3, "weight_decay": 0.01, "mixing": 0.0, "drop_path": 0.0, "alpha": 0.5, "tau": 2.0}
    trials = [trial_run(params, arm, data, hp, n) for n, arm in enumerate(["none", "control", "soft", "hard"])]
    assert {t.recipe.view_seed for t in trials} == {params.seed}
    best = Best(arm="soft", study_name="s", epochs=params.student.epochs, trial=0, objective=0.5, hparams=hp,
                n_trials=1, n_complete=1, n_pruned=0)
    finals = [final_run(params, "soft", data, best, s) for s in params.final.seeds]
    assert [f.recipe.view_seed for f in finals] == params.final.seeds
    assert all(f.log_params(params)["view_seed"] == s for f, s in zip(finals, params.final.seeds))


def epoch_logits(source: TeacherLogits, stream: ViewStream, x, y, epoch=0):
    hit = source.begin_epoch(epoch)
    out = torch.stack([source(step, xb) for step, (xb, _) in enumerate(stream.epoch(epoch, x, y))])
    source.end_epoch()
    return hit, out


def test_cached_logits_are_bitwise_the_live_logits(tmp_path):
    stream, x, y = views(0)
    shape = (stream.steps, 16, 3)
    _, live = epoch_logits(TeacherLogits(teacher_net(), CPU, shape), stream, x, y)
    hit, built = epoch_logits(TeacherLogits(teacher_net(), CPU, shape, tmp_path), stream, x, y)
    assert not hit and (tmp_path / "epoch_0000.npy").exists()
    reloaded = teacher_net()
    reloaded.load_state_dict(teacher_net().state_dict())
    hit, replayed = epoch_logits(TeacherLogits(reloaded, CPU, shape, tmp_path), stream, x, y)
    assert hit
    assert torch.equal(live, built) and torch.equal(live, replayed)
    assert live.dtype == torch.float32 and torch.equal(live, live.half().float())  # fp16 values in both modes


def distilled_fit(cache, kind="soft", epochs=2):
    r = recipe(epochs=epochs, loss=DistillLoss(kind, 0.5, 2.0), augment=AUG, mixing=0.8)
    net = student()
    history = train_one(net, toy_data(), r, teacher=teacher_net(), teacher_cache=cache, progress=False)
    return net, history


def same_training(a, b):
    (net_a, hist_a), (net_b, hist_b) = a, b
    for (k, va), (_, vb) in zip(net_a.state_dict().items(), net_b.state_dict().items()):
        assert torch.equal(va, vb), k
    drop = {"epoch_seconds", "teacher_from_cache"}
    assert [{k: v for k, v in h.items() if k not in drop} for h in hist_a] == \
           [{k: v for k, v in h.items() if k not in drop} for h in hist_b]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_a_trial_trained_from_the_cache_equals_the_live_trial(tmp_path, kind):
    cache = TeacherCache(tmp_path, 2**30)
    live = distilled_fit(None, kind)
    building = distilled_fit(cache, kind)
    replaying = distilled_fit(cache, kind)
    assert [h["teacher_from_cache"] for h in building[1]] == [0.0, 0.0]
    assert [h["teacher_from_cache"] for h in replaying[1]] == [1.0, 1.0]
    same_training(live, building)
    same_training(live, replaying)


@pytest.mark.slow
def test_the_replayed_logits_are_what_trains_the_student(tmp_path):
    """Guards the test above: if the cache were ignored, a tampered cache would change nothing."""
    cache = TeacherCache(tmp_path, 2**30)
    live = distilled_fit(cache)
    for f in tmp_path.glob("*/epoch_*.npy"):
        np.save(f, np.zeros_like(np.load(f)))
    tampered = distilled_fit(cache)
    assert not torch.equal(live[0].state_dict()["head_dist.weight"], tampered[0].state_dict()["head_dist.weight"])


@pytest.mark.slow
def test_an_unreadable_cache_file_is_recomputed(tmp_path):
    cache = TeacherCache(tmp_path, 2**30)
    live = distilled_fit(cache)
    files = sorted(tmp_path.glob("*/epoch_*.npy"))
    files[0].write_bytes(b"not an array")
    files[1].write_bytes(b"")  # empty: np.load raises EOFError
    again = distilled_fit(cache)
    assert [h["teacher_from_cache"] for h in again[1]] == [0.0, 0.0]
    same_training(live, again)
    assert all(np.load(f).shape == (3, 16, 3) for f in tmp_path.glob("*/epoch_*.npy"))


@pytest.mark.slow
def test_over_the_cap_the_teacher_runs_live_and_nothing_is_written(tmp_path, capsys):
    live = distilled_fit(None)
    capped = distilled_fit(TeacherCache(tmp_path, 100))
    same_training(live, capped)
    assert not list(tmp_path.glob("*/epoch_*.npy"))
    assert "over distill.cache_max_mb" in capsys.readouterr().out


@pytest.mark.slow
def test_the_size_is_printed_before_the_cache_is_built(tmp_path, capsys):
    distilled_fit(TeacherCache(tmp_path, 2**30), epochs=1)
    out = capsys.readouterr().out
    # 3 batches of 16 images, 3 classes, 2 bytes each, for 1 epoch: 288 bytes
    assert "caching teacher logits for 1 of 1 epochs: 1 × 3 batches × 16 images × 3 classes × 2 B" in out
    assert sum(f.stat().st_size for f in tmp_path.glob("*/epoch_*.npy")) >= 288


def key_of(**change):
    args = {"teacher_digest": state_digest(teacher_net()), "data_fingerprint": toy_data().fingerprint(),
            "augment": AUG, "mixing": 0.8, "batch_size": 16, "view_seed": 0, "device": CPU, **change}
    return stream_key(**args)


def test_streams_are_keyed_by_what_changes_the_logits(tmp_path):
    cache = TeacherCache(tmp_path, 2**30)
    same = cache.stream_dir(key_of())
    assert same == cache.stream_dir(key_of())
    changes = [{"teacher_digest": state_digest(teacher_net(seed=1))}, {"data_fingerprint": toy_data(seed=1).fingerprint()},
               {"mixing": 0.2}, {"batch_size": 14}, {"view_seed": 1}]
    changes += [{"augment": AUG.model_copy(update={field: value})} for field, value in
                (("randaugment", "rand-m9"), ("translate", 1), ("hflip", False), ("mix_prob", 0.5), ("random_erasing", 0.25))]
    assert {f for c in changes if "augment" in c for f in type(AUG).model_fields} == set(type(AUG).model_fields)
    for change in changes:
        assert cache.stream_dir(key_of(**change)) != same, change
    key = key_of()
    assert set(key["versions"]) == {"torch", "timm", "numpy", "pillow"} and "threads" in key["hardware"]


@pytest.mark.slow
def test_the_loop_files_its_logits_under_that_key(tmp_path):
    """Ties the loop to stream_key: a key the loop built by itself, missing a field, would land elsewhere."""
    distilled_fit(TeacherCache(tmp_path, 2**30), epochs=1)
    assert [d.name for d in tmp_path.iterdir()] == [TeacherCache(tmp_path, 0).stream_dir(key_of()).name]


@pytest.mark.slow
def test_a_resumed_distilled_run_replays_and_ends_where_the_uninterrupted_one_does(tmp_path):
    from distillery.core.errors import TrainingError

    cache = TeacherCache(tmp_path / "cache", 2**30)
    r = recipe(epochs=3, loss=DistillLoss("soft", 0.5, 2.0), augment=AUG, mixing=0.8)
    uninterrupted = (student(), None)
    uninterrupted = (uninterrupted[0], train_one(uninterrupted[0], toy_data(), r, teacher=teacher_net(), progress=False))

    def stop_after_two(record):
        if record["epoch"] == 2:
            raise TrainingError("killed")

    ckpt = tmp_path / "run.pt"
    with pytest.raises(TrainingError):
        train_one(student(), toy_data(), r, teacher=teacher_net(), teacher_cache=cache, checkpoint=ckpt,
            callbacks=[stop_after_two], progress=False)
    net = student()
    history = train_one(net, toy_data(), r, teacher=teacher_net(), teacher_cache=cache, checkpoint=ckpt, progress=False)
    assert [h["teacher_from_cache"] for h in history] == [0.0, 0.0, 0.0]  # epochs 1-2 restored, epoch 3 built
    assert len(list(tmp_path.glob("cache/*/epoch_*.npy"))) == 3
    same_training(uninterrupted, (net, history))


def test_live_mode_has_no_cache_and_cached_mode_lives_at_the_project(tmp_path):
    layout = Layout(tmp_path)
    assert cache_for(Params(distill={"teacher": "live"}), layout) is None
    cache = cache_for(Params(), layout)
    assert cache.root == tmp_path / "cache" / "teacher" and cache.max_bytes == 2048 * 2**20
    assert cache_for(Params(distill={"cache_dir": "elsewhere"}), layout).root == tmp_path / "elsewhere"


def test_open_without_a_cache_is_live():
    src = open_teacher_logits(teacher_net(), CPU, (1, 2, 3), range(2), None, {}, "t")
    assert src.stream is None and not src.begin_epoch(0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_training_step_waits_for_the_gpu(tmp_path):
    cuda = {"device": "cuda"}
    for kind, cache in (("none", None), ("soft", None), ("soft", TeacherCache(tmp_path, 2**30))):
        r = recipe(epochs=2, loss=DistillLoss(kind, 0.5, 2.0), augment=AUG, mixing=0.8, **cuda)
        train_one(student(), toy_data(), r, teacher=teacher_net() if kind != "none" else None, teacher_cache=cache,
            progress=False, forbid_host_sync=True)  # raises on the first synchronising call inside a step
