"""Fused training: a member trained in a group equals the same run trained alone.

The group-of-one path (each member's own module) is the reference. A fused member must see the same
views and draw the same drop-path masks, and end with the same weights up to floating-point summation
order; a fused run must be bitwise reproducible; a pruned member must leave its group without moving
the others.
"""

import pytest
import torch

from distillery.core.config import AugmentConfig, StudentConfig, TrainConfig
from distillery.core.errors import TrainingError
from distillery.recipe import droppath
from distillery.training.fusion import chunks, group_size, why_not_fusable
from distillery.recipe.run_recipe import Recipe
from distillery.training.loop import Member, fit
from distillery.recipe.losses import DistillLoss
from distillery.recipe.models import vit_spec

from test_train import toy_data

STUDENT = StudentConfig(patch_size=4, embed_dim=32, depth=3, num_heads=2)
AUGMENT = AugmentConfig(translate=1, random_erasing=0.25)


def spec(kind, drop_path):
    name = STUDENT.baseline_model if kind == "none" else STUDENT.model
    return vit_spec("s", name, 8, 1, 3, STUDENT, drop_path)


def loss_of(kind, alpha, tau):
    return {"none": DistillLoss("none"), "control": DistillLoss("control", 0.5),
            "soft": DistillLoss("soft", alpha, tau), "hard": DistillLoss("hard", alpha),
            "fake": DistillLoss("fake", alpha, tau)}[kind]


# each member its own seed, view seed, lr, weight decay, drop path, mixing, λ and τ
SETTINGS = [dict(seed=1, view_seed=1, lr=3e-3, wd=0.05, dp=0.1, mixing=0.8, alpha=0.3, tau=2.0),
            dict(seed=2, view_seed=2, lr=1e-3, wd=0.01, dp=0.0, mixing=0.0, alpha=0.7, tau=4.0),
            dict(seed=3, view_seed=1, lr=2e-3, wd=0.10, dp=0.05, mixing=0.8, alpha=0.5, tau=1.0)]


def members(kind, epochs=3, settings=SETTINGS, tmp=None):
    out = []
    for i, s in enumerate(settings):
        recipe = Recipe(epochs=epochs, lr=s["lr"], weight_decay=s["wd"], mixing=s["mixing"],
                        train=TrainConfig(batch_size=16, warmup_epochs=1), augment=AUGMENT,
                        loss=loss_of(kind, s["alpha"], s["tau"]), seed=s["seed"], view_seed=s["view_seed"])
        ckpt = tmp / f"m{i}.pt" if tmp is not None else None
        out.append(Member(spec(kind, s["dp"]).build(s["seed"]), recipe, f"m{i}", ckpt))
    return out


@pytest.fixture(scope="module")
def data():
    return toy_data(n_per_class=24)


@pytest.fixture(scope="module")
def teacher():
    import timm

    torch.manual_seed(0)
    return timm.create_model("distillery_cnn_small", in_chans=1, num_classes=3).eval()


def weights(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def max_diff(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["none", "control", "soft", "hard", "fake"])
def test_a_fused_member_ends_where_it_ends_alone(kind, data, teacher):
    t = teacher if kind in ("soft", "hard") else None
    alone = []
    for m in members(kind):
        fit([m], data, teacher=t, progress=False)
        alone.append(m)
    fused = fit(members(kind), data, teacher=t, progress=False)
    for a, f in zip(alone, fused):
        assert [h["epoch"] for h in f.history] == [1, 2, 3]
        assert max_diff(weights(a.net), weights(f.net)) < 2e-4  # summation order only
        for ha, hf in zip(a.history, f.history):
            assert ha["train_loss"] == pytest.approx(hf["train_loss"], abs=1e-4)
            assert ha["val_acc"] == pytest.approx(hf["val_acc"], abs=1 / 18 + 1e-9)  # at most one val image flips
            assert ha["lr"] == hf["lr"]
    assert fused[0].history[0]["group_size"] == 3 and alone[0].history[0]["group_size"] == 1


@pytest.mark.slow
def test_members_differ_where_their_settings_differ(data):
    fused = fit(members("none"), data, progress=False)
    w = [weights(m.net) for m in fused]
    assert max_diff(w[0], w[1]) > 1e-2 and max_diff(w[0], w[2]) > 1e-2


@pytest.mark.slow
def test_a_fused_run_is_bitwise_reproducible(data, teacher):
    runs = [fit(members("soft"), data, teacher=teacher, progress=False) for _ in range(2)]
    for a, b in zip(*runs):
        assert all(torch.equal(x, y) for x, y in zip(weights(a.net).values(), weights(b.net).values()))
        assert all(torch.equal(x, y) for x, y in zip(a.optimizer.state_dict()["state"][0].values(),
                                                       b.optimizer.state_dict()["state"][0].values()))
        assert [{k: v for k, v in h.items() if k != "epoch_seconds"} for h in a.history] == \
               [{k: v for k, v in h.items() if k != "epoch_seconds"} for h in b.history]


class Prune(Exception):
    pass


@pytest.mark.slow
def test_a_pruned_member_leaves_and_the_others_train_on_unmoved(data):
    ref = fit(members("control", epochs=4), data, progress=False)
    group = members("control", epochs=4)

    def prune_at_2(record):
        if record["epoch"] == 2:
            raise Prune("pruned at epoch 2")

    group[1].callbacks = [prune_at_2]
    fit(group, data, progress=False)
    assert isinstance(group[1].outcome, Prune) and len(group[1].history) == 2
    assert group[0].history[-1]["group_size"] == 2
    for i in (0, 2):
        assert len(group[i].history) == 4
        assert max_diff(weights(group[i].net), weights(ref[i].net)) < 2e-4  # 2 members now: summation order only
    assert max_diff(weights(group[1].net), weights(ref[1].net)) > 0  # it stopped: its weights are epoch 2's


@pytest.mark.slow
def test_a_killed_group_resumes_every_member_from_its_own_checkpoint(data, tmp_path):
    ref = fit(members("none", epochs=4), data, progress=False)
    first = members("none", epochs=2, tmp=tmp_path)
    fit(first, data, progress=False)
    # the same runs with the full budget would not resume a 2-epoch checkpoint (another schedule):
    # stop a 4-epoch group after its second epoch instead, as a kill would
    group = members("none", epochs=4, tmp=tmp_path / "k")
    (tmp_path / "k").mkdir()

    class Kill(BaseException):
        pass

    def kill_at_2(record):
        if record["epoch"] == 2:
            raise Kill()

    group[0].callbacks = [kill_at_2]
    with pytest.raises(Kill):
        fit(group, data, progress=False)
    log = tmp_path / "epochs.log"
    resumed = members("none", epochs=4, tmp=tmp_path / "k")
    import os

    os.environ["DISTILLERY_EPOCH_LOG"] = str(log)
    try:
        fit(resumed, data, progress=False)
    finally:
        del os.environ["DISTILLERY_EPOCH_LOG"]
    assert sorted(log.read_text().split("\n")[:-1]) == sorted(f"m{i}\t{e}" for i in range(3) for e in (3, 4))
    for a, b in zip(ref, resumed):
        assert [h["epoch"] for h in b.history] == [1, 2, 3, 4]
        assert max_diff(weights(a.net), weights(b.net)) == 0


@pytest.mark.slow
def test_a_member_whose_loss_is_not_finite_fails_alone(data):
    group = members("none", epochs=2)
    group[2].recipe = Recipe(**{**group[2].recipe.__dict__, "lr": 1e30})
    fit(group, data, progress=False)
    assert isinstance(group[2].outcome, TrainingError) and "loss became" in str(group[2].outcome)
    assert group[0].outcome is None and len(group[0].history) == 2


def test_drop_path_masks_are_the_runs_own():
    rates = torch.tensor([0.0, 0.5, 0.2])
    a = droppath.epoch_masks(7, 3, 5, 16, rates)
    assert torch.equal(a, droppath.epoch_masks(7, 3, 5, 16, rates))
    assert not torch.equal(a, droppath.epoch_masks(8, 3, 5, 16, rates))
    assert torch.all(a[:, 0] == 1)  # a path of rate 0 is never dropped
    assert set(a[:, 1].unique().tolist()) == {0.0, 2.0}  # timm's scaling: kept paths are divided by keep
    frac = float((droppath.epoch_masks(0, 0, 400, 64, rates)[:, 1] == 0).float().mean())
    assert abs(frac - 0.5) < 0.02


def test_the_saved_model_is_a_plain_timm_model():
    import timm

    net = spec("soft", 0.1).build(0)
    droppath.install(net)
    plain = timm.create_model(STUDENT.model, **{**spec("soft", 0.1).kwargs})
    assert set(net.state_dict()) == set(plain.state_dict())
    plain.load_state_dict(net.state_dict())


def test_what_cannot_be_fused_is_named(teacher):
    assert "BatchNorm" in why_not_fusable(teacher)
    assert why_not_fusable(spec("soft", 0.1).build(0)) is None
    with pytest.raises(TrainingError, match="cannot be fused"):
        import copy

        r = Recipe(epochs=1, lr=1e-3, weight_decay=0.0, mixing=0.0, train=TrainConfig(batch_size=16), augment=AUGMENT)
        fit([Member(copy.deepcopy(teacher), r), Member(copy.deepcopy(teacher), r)], toy_data(), progress=False)
    with pytest.raises(TrainingError, match="cannot be fused"):  # asked for the stacked forward with one member
        fit([Member(copy.deepcopy(teacher), r)], toy_data(), progress=False, fused=True)


def test_group_sizes_follow_the_setting():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert group_size("off", 20, cpu, 1e6) == 1
    assert group_size("auto", 5, cpu, 1e6) == 5
    assert group_size("auto", 40, cpu, 1e6) == 16
    assert group_size("auto", 40, cpu, 1e10) == 1  # compute-bound on a CPU: nothing to gain
    assert group_size("auto", 40, cpu, 1.62e8) == 1  # photos-small's student: slower fused on a 2-core CPU
    assert group_size("auto", 40, cpu, 7.3e6) == 16  # the default student: faster
    assert group_size("auto", 100, cuda, 1e7) == 64
    assert group_size("auto", 100, cuda, 2e9) == 1  # DeiT-Tiny at 224 px fills a GPU alone
    assert group_size(4, 10, cpu, 1e6) == 4
    assert group_size("auto", 10, cpu, 1e6, world=2) == 1
    assert [len(c) for c in chunks(list(range(9)), 4)] == [3, 3, 3]
    assert [len(c) for c in chunks(list(range(5)), 16)] == [5]
    assert sum(chunks(list(range(10)), 3), []) == list(range(10))


@pytest.mark.slow
def test_a_kill_between_two_members_checkpoints_costs_one_epoch_and_no_bit(data, tmp_path):
    """Killed while the group wrote its epoch-3 checkpoints: member 0's still says epoch 2. The others
    step back to their previous checkpoint and the group redoes epoch 3 together."""
    ref = fit(members("none", epochs=4), data, progress=False)

    class Kill(BaseException):
        pass

    def kill_at_3(record):
        if record["epoch"] == 3:
            raise Kill()

    group = members("none", epochs=4, tmp=tmp_path)
    group[0].callbacks = [kill_at_3]
    with pytest.raises(Kill):
        fit(group, data, progress=False)
    first = tmp_path / "m0.pt"
    first.unlink()
    (tmp_path / "m0.pt.previous").rename(first)  # as if the kill came before member 0's epoch-3 write
    resumed = fit(members("none", epochs=4, tmp=tmp_path), data, progress=False)
    for a, b in zip(ref, resumed):
        assert [h["epoch"] for h in b.history] == [1, 2, 3, 4]
        assert max_diff(weights(a.net), weights(b.net)) == 0
