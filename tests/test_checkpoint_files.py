"""Weight files are read safely (never unpickling objects) and every bad file ends in one ConfigError line."""

import os
import pathlib
import re

import pytest
import timm
import torch
from safetensors.torch import save_file

from distillery.core.errors import ConfigError
from distillery.recipe import models as models_mod
from distillery.recipe.models import (
    build_teacher,
    load_model,
    load_partial_state,
    read_weights,
    save_model,
)

MODEL = "distillery_cnn_small"


def small_cnn(num_classes=10, in_chans=1, seed=0):
    torch.manual_seed(seed)
    return timm.create_model(MODEL, in_chans=in_chans, num_classes=num_classes)


def error_line(excinfo, path):
    """The message is one line and names the file."""
    msg = str(excinfo.value)
    assert "\n" not in msg and "\r" not in msg, msg
    assert str(path) in msg, msg
    return msg


def assert_backbone_equal(net, source):
    for key, value in source.state_dict().items():
        if not key.startswith("fc."):
            torch.testing.assert_close(net.state_dict()[key], value, msg=key)


# ---------------------------------------------------------------- good files as a fine-tuning start
def test_safetensors_state_dict_is_a_fine_tuning_start(tmp_path, capsys):
    source = small_cnn(10)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    assert set(read_weights(path)) == set(source.state_dict())
    net, _ = build_teacher(MODEL, 1, 10, str(path), seed=1)
    for key, value in source.state_dict().items():
        torch.testing.assert_close(net.state_dict()[key], value, msg=key)
    assert capsys.readouterr().out == ""  # nothing re-initialised: nothing to say


def test_torch_pth_state_dict_and_wrapped_dicts_are_fine_tuning_starts(tmp_path):
    source = small_cnn(10)
    for i, blob in enumerate([source.state_dict(), {"state_dict": source.state_dict(), "epoch": 3},
                              {"model": source.state_dict()}]):
        path = tmp_path / f"w{i}.pth"
        torch.save(blob, path)
        net, _ = build_teacher(MODEL, 1, 10, str(path), seed=1)
        torch.testing.assert_close(net.fc.weight, source.fc.weight)
        assert_backbone_equal(net, source)


def test_our_checkpoint_is_a_fine_tuning_start(tmp_path):
    source, spec = build_teacher(MODEL, 1, 10, False, seed=3)
    save_model(tmp_path / "teacher.pt", source, spec, {"history": [{"epoch": 1, "val_acc": 0.5}]})
    net, _ = build_teacher(MODEL, 1, 10, str(tmp_path / "teacher.pt"), seed=4)
    for key, value in source.state_dict().items():
        torch.testing.assert_close(net.state_dict()[key], value, msg=key)


def test_our_checkpoint_of_another_model_is_refused(tmp_path):
    source, spec = build_teacher("distillery_cnn_base", 1, 10, False)
    path = tmp_path / "base.pt"
    save_model(path, source, spec)
    with pytest.raises(ConfigError) as excinfo:
        build_teacher(MODEL, 1, 10, str(path))
    msg = error_line(excinfo, path)
    assert "distillery_cnn_base" in msg and MODEL in msg and "teacher.pretrained=" in msg


def test_different_class_count_reinitialises_the_head_and_says_so(tmp_path, capsys):
    source = small_cnn(10)
    path = tmp_path / "imagenet_like.pth"
    torch.save(source.state_dict(), path)
    net, _ = build_teacher(MODEL, 1, 5, str(path), seed=1)
    assert net.fc.out_features == 5
    assert_backbone_equal(net, source)
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1, out
    assert "fc.weight" in out and "fc.bias" in out and "10 classes" in out and "data 5" in out and str(path) in out
    assert sorted(load_partial_state(net, path, model=MODEL)) == ["fc.bias", "fc.weight"]


def test_different_input_channels_reinitialise_the_first_conv_and_say_so(tmp_path, capsys):
    source = small_cnn(10, in_chans=3)
    path = tmp_path / "rgb.pt"
    torch.save(source.state_dict(), path)
    net, _ = build_teacher(MODEL, 1, 10, str(path), seed=1)
    assert net.features[0].weight.shape[1] == 1
    torch.testing.assert_close(net.features[3].weight, source.features[3].weight)
    torch.testing.assert_close(net.fc.weight, source.fc.weight)
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1, out
    assert "features.0.weight" in out and "3 input channels" in out and "data 1" in out


# ---------------------------------------------------------------- bad files: one line each
def test_missing_file(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(ConfigError) as excinfo:
        build_teacher(MODEL, 1, 10, str(path))
    assert "does not exist" in error_line(excinfo, path)
    with pytest.raises(ConfigError) as excinfo:
        load_model(path)
    assert "not found" in error_line(excinfo, path)


def test_empty_file(tmp_path):
    for name in ("empty.pth", "empty.safetensors"):
        path = tmp_path / name
        path.write_bytes(b"")
        with pytest.raises(ConfigError) as excinfo:
            build_teacher(MODEL, 1, 10, str(path))
        assert "empty" in error_line(excinfo, path)


def test_truncated_files(tmp_path):
    source = small_cnn(10)
    whole_pt, whole_st = tmp_path / "whole.pt", tmp_path / "whole.safetensors"
    save_model(whole_pt, source, models_mod.teacher_spec(MODEL, 1, 10))
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(whole_st))
    for whole in (whole_pt, whole_st):
        data = whole.read_bytes()
        path = tmp_path / f"half{whole.suffix}"
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(ConfigError) as excinfo:
            build_teacher(MODEL, 1, 10, str(path))
        assert "truncated" in error_line(excinfo, path)
        if whole is whole_pt:
            with pytest.raises(ConfigError) as excinfo:
                load_model(path)
            assert "truncated" in error_line(excinfo, path)


def test_random_bytes(tmp_path):
    gen = torch.Generator().manual_seed(0)
    noise = bytes(torch.randint(0, 256, (4096,), generator=gen, dtype=torch.uint8).tolist())
    for name in ("noise.bin", "noise.safetensors"):
        path = tmp_path / name
        path.write_bytes(noise)
        with pytest.raises(ConfigError) as excinfo:
            build_teacher(MODEL, 1, 10, str(path))
        msg = error_line(excinfo, path)
        assert "not a PyTorch or safetensors checkpoint" in msg or "not a valid safetensors file" in msg


class Payload:
    """Unpickling this object would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


class ShellPayload(Payload):
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("payload", [Payload, ShellPayload])
def test_malicious_pickle_is_never_executed(tmp_path, payload):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": small_cnn(10).state_dict(), "hook": payload(marker)}, path)
    assert not marker.exists()
    with pytest.raises(ConfigError) as excinfo:
        build_teacher(MODEL, 1, 10, str(path))
    msg = error_line(excinfo, path)
    assert not marker.exists()
    assert "weights only" in msg and "torch.save(model.state_dict(), path)" in msg and "safetensors" in msg
    with pytest.raises(ConfigError) as excinfo:
        load_model(path)
    assert "weights only" in error_line(excinfo, path)
    assert not marker.exists()


def test_wrong_architecture(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", num_classes=10, in_chans=1).state_dict(), path)
    with pytest.raises(ConfigError) as excinfo:
        build_teacher(MODEL, 1, 10, str(path))
    msg = error_line(excinfo, path)
    assert MODEL in msg and "teacher.pretrained=" in msg
    assert re.search(r"only [01] of its 32 tensors", msg), msg  # at most fc.bias (10 classes) matches


def test_a_file_without_tensors(tmp_path):
    path = tmp_path / "numbers.pt"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(ConfigError) as excinfo:
        build_teacher(MODEL, 1, 10, str(path))
    assert "no tensors" in error_line(excinfo, path)


# ---------------------------------------------------------------- load_model
def test_save_model_blob_loads_with_weights_only(tmp_path):
    import numpy as np

    source, spec = build_teacher(MODEL, 1, 10, False)
    path = tmp_path / "teacher.pt"
    save_model(path, source, spec, {"history": [{"epoch": 1, "val_acc": np.float64(0.25), "lr": 0.1}]})
    blob = torch.load(path, map_location="cpu", weights_only=True)
    assert set(blob) == {"spec", "state_dict", "extra"}
    assert blob["spec"] == {"kind": "teacher", "name": MODEL, "kwargs": {"in_chans": 1, "num_classes": 10}}
    assert blob["extra"]["history"][0]["val_acc"] == 0.25
    net, spec2, extra = load_model(path, expect_classes=10, expect_chans=1)
    assert spec2 == spec and extra["history"][0]["epoch"] == 1
    torch.testing.assert_close(net.fc.weight, source.fc.weight)


def test_load_model_refuses_a_checkpoint_for_other_data(tmp_path):
    source, spec = build_teacher(MODEL, 1, 10, False)
    path = tmp_path / "teacher.pt"
    save_model(path, source, spec)
    with pytest.raises(ConfigError) as excinfo:
        load_model(path, expect_classes=5)
    msg = error_line(excinfo, path)
    assert "10 classes" in msg and "has 5" in msg and "dvc repro teacher" in msg
    with pytest.raises(ConfigError) as excinfo:
        load_model(path, expect_classes=10, expect_chans=3)
    msg = error_line(excinfo, path)
    assert "1-channel" in msg and "has 3" in msg


def test_load_model_refuses_a_plain_state_dict(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save(small_cnn(10).state_dict(), path)
    with pytest.raises(ConfigError) as excinfo:
        load_model(path)
    assert "not a distillery model checkpoint" in error_line(excinfo, path)


# ---------------------------------------------------------------- timm hub weights
def test_pretrained_true_without_the_hub_is_one_line(monkeypatch):
    real = timm.create_model

    def offline(name, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co' to load this file.\n"
                          "Check your internet connection or see\nhttps://huggingface.co/docs")
        return real(name, pretrained=pretrained, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(ConfigError) as excinfo:
        build_teacher("resnet18", 3, 5, True)
    msg = str(excinfo.value)
    assert "\n" not in msg
    assert "teacher.pretrained=true" in msg and "resnet18" in msg and "couldn't connect" in msg


def test_pretrained_true_for_our_cnn_keeps_its_own_message():
    with pytest.raises(ConfigError) as excinfo:
        build_teacher(MODEL, 1, 5, True)
    msg = str(excinfo.value)
    assert "\n" not in msg and "no published weights" in msg and "could not fetch" not in msg
