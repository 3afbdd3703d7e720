"""The training loop: it learns, the teacher sees the student's exact batch, resume is exact."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from distillery.core.config import AugmentConfig, StudentConfig, TrainConfig
from distillery.data import Prepared, Split
from distillery.core.errors import TrainingError
from distillery.recipe.losses import DistillLoss
from distillery.recipe.models import vit_spec
from distillery.recipe.run_recipe import Recipe
from distillery.training.loop import Member, fit

STUDENT = StudentConfig(patch_size=4, embed_dim=32, depth=2, num_heads=2)


def toy_data(n_per_class=24, classes=3, size=8, seed=0):
    """Class c is a bright square in corner c: learnable in a few epochs."""
    rng = np.random.default_rng(seed)
    x, y = [], []
    for c in range(classes):
        for _ in range(n_per_class):
            img = rng.integers(0, 40, (1, size, size), dtype=np.uint8)
            r, col = divmod(c, 2)
            img[0, r * 4:r * 4 + 4, col * 4:col * 4 + 4] = 220
            x.append(img)
            y.append(c)
    x, y = np.stack(x), np.array(y)
    perm = rng.permutation(len(y))
    x, y = x[perm], y[perm]
    n_val = len(y) // 4
    splits = {"train": Split(x[n_val:], y[n_val:]), "val": Split(x[:n_val], y[:n_val]), "test": Split(x[:n_val], y[:n_val])}
    return Prepared(splits, [str(c) for c in range(classes)], [0.2], [0.3])


def train_one(net, data, recipe, *, checkpoint=None, callbacks=(), fingerprint_extra=None, desc="train", **kw):
    """A run alone: a group of one through the one loop; its history, or the exception that stopped it."""
    member = Member(net, recipe, desc, checkpoint, list(callbacks), fingerprint_extra)
    fit([member], data, desc=desc, **kw)
    return member.result()


def recipe(epochs=3, loss=DistillLoss("none"), augment=None, mixing=0.0, **train):
    return Recipe(epochs=epochs, lr=3e-3, weight_decay=0.0, mixing=mixing,
                  train=TrainConfig(**{"batch_size": 16, "warmup_epochs": 0, **train}),
                  augment=augment or AugmentConfig(translate=0), loss=loss, seed=0)


def build(distilled):
    spec = vit_spec("s", STUDENT.model if distilled else STUDENT.baseline_model, 8, 1, 3, STUDENT, 0.0)
    torch.manual_seed(0)
    return spec.build()


@pytest.mark.slow
def test_the_loop_learns_the_toy_task():
    import timm

    torch.manual_seed(0)
    net = timm.create_model("distillery_cnn_small", in_chans=1, num_classes=3)
    history = train_one(net, toy_data(), recipe(epochs=3), progress=False)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["val_acc"] > 0.9
    assert history[-1]["train_loss"] < history[0]["train_loss"]


class RecordingTeacher(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.seen = []
        self.proj = nn.Linear(1, classes)

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.proj(x.mean(dim=(1, 2, 3))[:, None])


class RecordingStudent(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.seen = []
        self.head_dist = inner.head_dist  # marks it as distilled for evaluation

    def set_distilled_training(self, enable):
        self.inner.set_distilled_training(enable)

    def forward_features(self, x):
        return self.inner.forward_features(x)

    @property
    def head(self):
        return self.inner.head

    def forward(self, x):
        if self.training:
            self.seen.append(x.detach().clone())
        return self.inner(x)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_teacher_scores_exactly_the_augmented_mixed_batch(kind):
    teacher, student = RecordingTeacher(), RecordingStudent(build(True))
    aug = AugmentConfig(translate=2, hflip=True, random_erasing=0.5)
    train_one(student, toy_data(), recipe(epochs=1, loss=DistillLoss(kind, 0.5, 2.0), augment=aug, mixing=0.8),
        teacher=teacher, progress=False)
    assert len(teacher.seen) == len(student.seen) > 0
    for t, s in zip(teacher.seen, student.seen):
        torch.testing.assert_close(t, s, rtol=0, atol=0)
    raw = toy_data().splits["train"].x
    assert not any(torch.equal(s[:, :1], torch.as_tensor(raw[:16]).float()) for s in student.seen)  # it was augmented


@pytest.mark.slow
def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path):
    data, r = toy_data(), recipe(epochs=4, loss=DistillLoss("none"), augment=AugmentConfig(translate=1), mixing=0.5)
    full = train_one(build(False), data, r, checkpoint=tmp_path / "full.pt", progress=False)

    class Interrupt(Exception):
        pass

    def stop_after_two(record):
        if record["epoch"] == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_one(build(False), data, r, checkpoint=tmp_path / "cut.pt", callbacks=[stop_after_two], progress=False)
    resumed_net = build(False)
    resumed = train_one(resumed_net, data, r, checkpoint=tmp_path / "cut.pt", progress=False)
    drop = ("epoch_seconds",)
    assert [{k: v for k, v in h.items() if k not in drop} for h in resumed] == \
           [{k: v for k, v in h.items() if k not in drop} for h in full]


@pytest.mark.slow
def test_checkpoint_of_another_recipe_is_not_resumed(tmp_path):
    data = toy_data()
    train_one(build(False), data, recipe(epochs=2), checkpoint=tmp_path / "c.pt", progress=False)
    history = train_one(build(False), data, recipe(epochs=3), checkpoint=tmp_path / "c.pt", progress=False)
    assert [h["epoch"] for h in history] == [1, 2, 3]


class TurnsNaN(nn.Module):
    """A model whose outputs become NaN from its `after`-th training call on."""

    def __init__(self, inner, after):
        super().__init__()
        self.inner, self.calls, self.after = inner, 0, after

    def forward(self, x):
        self.calls += self.training
        out = self.inner(x)
        return out * float("nan") if self.calls >= self.after else out


@pytest.mark.slow
def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
    steps = len(toy_data().splits["train"].y) // 16  # per epoch
    ckpt = tmp_path / "c.pt"
    with pytest.raises(TrainingError, match="loss became nan at epoch 2, step 2"):
        train_one(TurnsNaN(build(False), after=steps + 2), toy_data(), recipe(epochs=3), checkpoint=ckpt, progress=False)
    state = torch.load(ckpt, weights_only=True)
    assert state["epoch"] == 0 and len(state["history"]) == 1  # epoch 1 intact
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_distillation_without_teacher_is_refused():
    with pytest.raises(TrainingError, match="needs a teacher"):
        train_one(build(True), toy_data(), recipe(loss=DistillLoss("hard")), progress=False)


def test_no_teacher_arm_refuses_a_teacher():
    """The control arm trains the two-token architecture but must never see the teacher."""
    with pytest.raises(TrainingError, match="must not see a teacher"):
        train_one(build(True), toy_data(), recipe(loss=DistillLoss("control")), teacher=RecordingTeacher(), progress=False)


@pytest.mark.slow
def test_control_trains_both_heads_on_the_labels():
    net = build(True)
    history = train_one(net, toy_data(), recipe(epochs=2, loss=DistillLoss("control")), progress=False)
    assert "val_acc_dist" in history[-1] and "train_distill" in history[-1]


def test_odd_batch_with_mixing_is_refused_in_one_line():
    with pytest.raises(TrainingError, match="odd and Mixup/CutMix"):
        train_one(build(False), toy_data(), recipe(mixing=0.8, batch_size=15), progress=False)


@pytest.mark.slow
def test_fewer_odd_training_images_than_a_batch_still_mix():
    data = toy_data(n_per_class=3)  # 7 training images, batch 16: the batch shrinks to 6, not to an odd 7
    assert len(data.splits["train"].y) == 7
    history = train_one(build(False), data, recipe(epochs=1, mixing=0.8, batch_size=16), progress=False)
    assert len(history) == 1
