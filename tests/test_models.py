"""Model builders: two heads while distilling, one tensor at inference, checkpoints rebuild themselves."""

import timm
import torch

from distillery.core.config import StudentConfig
from distillery.recipe.models import (
    build_teacher,
    count_params,
    load_model,
    load_partial_state,
    save_model,
    split_heads,
    vit_spec,
)

STUDENT = StudentConfig(patch_size=4, embed_dim=32, depth=2, num_heads=2)


def student(distilled=True):
    name = STUDENT.model if distilled else STUDENT.baseline_model
    return vit_spec("student" if distilled else "baseline", name, 16, 1, 10, STUDENT, 0.1)


def test_distilled_student_returns_two_heads_in_distilled_training():
    net = student().build()
    net.set_distilled_training(True)
    net.train()
    out = net(torch.randn(4, 1, 16, 16))
    assert isinstance(out, tuple) and len(out) == 2
    assert out[0].shape == out[1].shape == (4, 10)


def test_distilled_student_returns_one_tensor_at_inference():
    net = student().build()
    net.set_distilled_training(True)
    net.eval()
    x = torch.randn(4, 1, 16, 16)
    out = net(x)
    assert isinstance(out, torch.Tensor) and out.shape == (4, 10)
    z_c, z_d = split_heads(net, x)
    torch.testing.assert_close(out, (z_c + z_d) / 2)  # inference averages the two heads


def test_baseline_is_a_plain_vit_of_the_same_size():
    base, dist = student(False).build(), student(True).build()
    assert not hasattr(base, "head_dist") and hasattr(dist, "head_dist")
    assert isinstance(base(torch.randn(2, 1, 16, 16)), torch.Tensor)
    # the distilled model has exactly one more token, one more position and one more head
    extra = count_params(dist) - count_params(base)
    assert extra == 32 + 32 + (32 * 10 + 10)
    assert split_heads(base, torch.randn(2, 1, 16, 16))[1] is None


def test_small_cnn_is_in_timms_registry():
    assert timm.is_model("distillery_cnn_small") and timm.is_model("distillery_cnn_base")
    net = timm.create_model("distillery_cnn_small", in_chans=1, num_classes=7)
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 7)


def test_checkpoint_roundtrip_rebuilds_the_same_model(tmp_path):
    net = student().build().eval()
    save_model(tmp_path / "m.pt", net, student(), {"note": 1})
    again, spec, extra = load_model(tmp_path / "m.pt")
    x = torch.randn(3, 1, 16, 16)
    torch.testing.assert_close(net(x), again.eval()(x))
    assert spec.name == STUDENT.model and extra == {"note": 1}


def test_teacher_fine_tunes_from_a_local_checkpoint_with_a_new_head(tmp_path):
    source, spec = build_teacher("distillery_cnn_small", 1, 10, False)
    save_model(tmp_path / "t.pt", source, spec)
    net, _ = build_teacher("distillery_cnn_small", 1, 4, str(tmp_path / "t.pt"))
    torch.testing.assert_close(net.features[0].weight, source.features[0].weight)
    assert net.fc.out_features == 4
    skipped = load_partial_state(net, tmp_path / "t.pt")
    assert sorted(skipped) == ["fc.bias", "fc.weight"]


def test_seeded_build_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b, c = student().build(seed=1), student().build(seed=1), student().build(seed=2)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a.pos_embed, b.pos_embed) and not torch.equal(a.pos_embed, c.pos_embed)
