"""Model builders (teacher, distilled student, plain ViT) and checkpoints that rebuild themselves.

Small images (8-32 px) make timm's ImageNet CNNs collapse the feature map to nothing, so we
register two small CNNs in timm's registry: they are then chosen by name like any timm model.
"""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torch.nn as nn
from timm.models import register_model

from ..core.config import Params
from ..core.errors import ConfigError, DistilleryError
from ..core.files import atomic_path
from .weight_files import file_label, one_line, read_weights


# ---------------------------------------------------------------- our small CNN teachers
class SmallCNN(nn.Module):
    """VGG-style CNN for tiny images: two pooled stages, a third conv stage, global pooling."""

    def __init__(self, widths: tuple[int, int, int] = (32, 64, 128), in_chans: int = 3, num_classes: int = 1000,
                 drop_rate: float = 0.2, **_: Any):
        super().__init__()
        w1, w2, w3 = widths

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *block(in_chans, w1), *block(w1, w1), nn.MaxPool2d(2),
            *block(w1, w2), *block(w2, w2), nn.MaxPool2d(2),
            *block(w2, w3),
        )
        self.num_classes = num_classes
        self.num_features = w3
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(w3, num_classes)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.pool(self.features(x)).flatten(1)))


def _small_cnn(widths: tuple[int, int, int], pretrained: bool, kwargs: dict[str, Any]) -> SmallCNN:
    if pretrained:
        raise ConfigError(
            "teacher.pretrained=true: distillery's small CNNs have no published weights; "
            "use false (train from scratch) or a path to a local checkpoint"
        )
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "drop_path_rate"):
        kwargs.pop(key, None)
    return SmallCNN(widths, **kwargs)


@register_model
def distillery_cnn_small(pretrained: bool = False, **kwargs: Any) -> SmallCNN:
    """~0.3M parameters; for 8-64 px inputs."""
    return _small_cnn((32, 64, 128), pretrained, kwargs)


@register_model
def distillery_cnn_base(pretrained: bool = False, **kwargs: Any) -> SmallCNN:
    """~1.2M parameters; for 8-64 px inputs."""
    return _small_cnn((64, 128, 256), pretrained, kwargs)


# ---------------------------------------------------------------- builders
@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model: stored inside every checkpoint."""

    kind: str  # "teacher" | "student" | "baseline"
    name: str
    kwargs: dict[str, Any]

    def build(self, seed: int | None = None) -> nn.Module:
        """A fresh model; with `seed`, its initial weights are a function of the seed alone."""
        try:
            with torch.random.fork_rng(devices=[]):
                if seed is not None:
                    torch.manual_seed(seed)
                return timm.create_model(self.name, pretrained=False, **self.kwargs)
        except RuntimeError as exc:
            raise ConfigError(f"timm could not build '{self.name}' with {self.kwargs}: {exc}") from None


def teacher_spec(model: str, in_chans: int, num_classes: int) -> ModelSpec:
    return ModelSpec("teacher", model, {"in_chans": in_chans, "num_classes": num_classes})


def vit_spec(kind: str, model: str, image_size: int, in_chans: int, num_classes: int, student_cfg,
             drop_path: float) -> ModelSpec:
    return ModelSpec(kind, model, {
        "img_size": image_size,
        "patch_size": student_cfg.patch_size,
        "embed_dim": student_cfg.embed_dim,
        "depth": student_cfg.depth,
        "num_heads": student_cfg.num_heads,
        "in_chans": in_chans,
        "num_classes": num_classes,
        "drop_path_rate": drop_path,
    })


def build_teacher(model: str, in_chans: int, num_classes: int, pretrained: bool | str,
                  seed: int | None = None) -> tuple[nn.Module, ModelSpec]:
    """A timm CNN, trained from scratch (False), from timm's weights (True) or from a local file (path)."""
    spec = teacher_spec(model, in_chans, num_classes)
    if pretrained is True:
        try:
            net = timm.create_model(model, pretrained=True, **spec.kwargs)
        except DistilleryError:
            raise
        except Exception as exc:  # network, missing weights, hub errors: all end the same way for the user
            raise ConfigError(
                f"teacher.pretrained=true could not fetch timm weights for '{model}' "
                f"({type(exc).__name__}: {one_line(exc)}); it needs the internet, or give a local checkpoint path"
            ) from None
        return net, spec
    net = spec.build(seed)
    if isinstance(pretrained, str):
        load_partial_state(net, Path(pretrained).expanduser(), model=model)
    return net, spec


# ---------------------------------------------------------------- fine-tuning starts
def _classifier_prefix(net: nn.Module) -> str | None:
    get = getattr(net, "get_classifier", None)
    head = get() if callable(get) else None
    if isinstance(head, nn.Module):
        for name, module in net.named_modules():
            if module is head and name:
                return name
    cfg = getattr(net, "pretrained_cfg", None) or {}
    return cfg.get("classifier") if isinstance(cfg.get("classifier"), str) else None


def _first_conv_key(own: dict[str, torch.Tensor]) -> str | None:
    return next((k for k, v in own.items() if k.endswith("weight") and v.ndim == 4), None)


def load_partial_state(net: nn.Module, path: Path, model: str | None = None,
                       what: str = "teacher.pretrained") -> list[str]:
    """Fine-tuning start: copy every tensor whose name and shape match; report the tensors re-initialised.

    Reads a plain state dict (.pth/.pt/.bin or .safetensors), {"state_dict": ...}, {"model": ...} or
    one of our checkpoints; returns the names of the model's tensors that kept their fresh init.
    """
    path = Path(path)
    label = file_label(path, what)
    if not path.exists():
        raise ConfigError(f"{label} does not exist; allowed: false, true or a checkpoint path")
    blob = read_weights(path, what)
    if "spec" in blob and "state_dict" in blob:
        spec = blob["spec"]
        name = spec.get("name") if isinstance(spec, dict) else None
        if model is not None and name != model:
            raise ConfigError(f"{label} is a distillery checkpoint of '{name}', but teacher.model is '{model}'; "
                              f"set teacher.model: {name} or give a checkpoint of '{model}'")
        state = blob["state_dict"]
    elif isinstance(blob.get("state_dict"), dict):
        state = blob["state_dict"]
    elif isinstance(blob.get("model"), dict):
        state = blob["model"]
    else:
        state = blob
    state = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not state:
        raise ConfigError(f"{label} holds no tensors (keys: {', '.join(map(str, list(blob)[:6]))}); "
                          "expected a state dict")
    own = net.state_dict()
    arch = model or type(net).__name__
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if len(matched) < len(own) / 2:
        raise ConfigError(
            f"{label} does not fit model '{arch}': only {len(matched)} of its {len(own)} tensors match by name "
            f"and shape; is it a checkpoint of another architecture?"
        )
    net.load_state_dict(matched, strict=False)
    reinit = sorted(k for k in own if k not in matched)
    unused = [k for k in state if k not in own]
    if reinit or unused:
        print(_fine_tune_line(net, own, state, reinit, unused, path, arch))
    return reinit


def _fine_tune_line(net: nn.Module, own: dict[str, torch.Tensor], state: dict[str, torch.Tensor],
                    reinit: list[str], unused: list[str], path: Path, arch: str) -> str:
    parts = []
    rest = list(reinit)
    prefix = _classifier_prefix(net)
    head = [k for k in rest if prefix and k.startswith(prefix + ".")]
    if head:
        key = f"{prefix}.weight"
        if key in state and key in own and state[key].ndim >= 1:
            why = f"the file has {state[key].shape[0]} classes, the data {own[key].shape[0]}"
        else:
            why = "not in the file"
        parts.append(f"classifier {', '.join(head)} ({why})")
        rest = [k for k in rest if k not in head]
    conv = _first_conv_key(own)
    if conv in rest:
        if conv in state and state[conv].ndim == 4 and state[conv].shape[1] != own[conv].shape[1]:
            why = f"the file has {state[conv].shape[1]} input channels, the data {own[conv].shape[1]}"
        else:
            why = "shape differs" if conv in state else "not in the file"
        parts.append(f"first conv {conv} ({why})")
        rest.remove(conv)
    if rest:
        more = f" and {len(rest) - 6} more" if len(rest) > 6 else ""
        parts.append(f"{len(rest)} other tensor(s) that differ or are missing: {', '.join(rest[:6])}{more}")
    line = f"fine-tuning '{arch}' from {path}: "
    line += f"re-initialised {'; '.join(parts)}" if parts else "all tensors loaded"
    if unused:
        line += f"; ignored {len(unused)} tensor(s) of the file that the model lacks"
    return line


def state_digest(net: nn.Module) -> str:
    """Identifies a model's weights (a teacher in cache keys and checkpoint fingerprints)."""
    h = hashlib.sha1()
    for name, tensor in net.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def count_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# ---------------------------------------------------------------- checkpoints
def _plain(value: Any) -> Any:
    """Numpy scalars and arrays as Python values, so that the checkpoint loads with weights_only=True."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def save_model(path: Path, net: nn.Module, spec: ModelSpec, extra: dict[str, Any] | None = None) -> None:
    blob = {"spec": {"kind": spec.kind, "name": spec.name, "kwargs": _plain(dict(spec.kwargs))},
            "state_dict": net.state_dict(), "extra": _plain(extra or {})}
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)


def load_model(path: Path, map_location: str | torch.device = "cpu", *, expect_classes: int | None = None,
               expect_chans: int | None = None) -> tuple[nn.Module, ModelSpec, dict[str, Any]]:
    """Rebuild a model written by save_model; with expect_*, check it fits the prepared data."""
    path = Path(path)
    label = file_label(path, None)
    if not path.exists():
        raise ConfigError(f"{label} not found; run the stage that writes it first")
    blob = read_weights(path, None, map_location)
    raw_spec, state = blob.get("spec"), blob.get("state_dict")
    if not isinstance(raw_spec, dict) or not isinstance(state, dict):
        raise ConfigError(f"{label} is not a distillery model checkpoint (no 'spec' and 'state_dict'; "
                          "it looks like a plain state dict); load_model reads files written by the pipeline stages")
    try:
        spec = ModelSpec(kind=str(raw_spec["kind"]), name=str(raw_spec["name"]), kwargs=dict(raw_spec["kwargs"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{label} has a damaged 'spec' ({type(exc).__name__}: {one_line(exc)}); "
                          "rerun the stage that writes it") from None
    rerun = "rerun the teacher stage (dvc repro teacher)" if spec.kind == "teacher" else \
        "rerun the stage that writes it (dvc repro)"
    classes, chans = spec.kwargs.get("num_classes"), spec.kwargs.get("in_chans")
    if expect_classes is not None and classes is not None and classes != expect_classes:
        raise ConfigError(f"{label} was trained for {classes} classes but the prepared data has {expect_classes}; "
                          f"{rerun}")
    if expect_chans is not None and chans is not None and chans != expect_chans:
        raise ConfigError(f"{label} was trained on {chans}-channel images but the prepared data has {expect_chans} "
                          f"channel(s); {rerun}")
    net = spec.build()
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(f"{label} does not match its own spec '{spec.name}' ({one_line(exc)}); "
                          f"it was written by other code, {rerun}") from None
    extra = blob.get("extra", {})
    return net, spec, extra if isinstance(extra, dict) else {}


def split_heads(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits of the class head and, for a distilled ViT, of the distillation head, in any mode."""
    if hasattr(net, "head_dist"):
        feats = net.forward_features(x)
        return net.head(feats[:, 0]), net.head_dist(feats[:, 1])
    return net(x), None


def check_model_names(params: Params) -> None:
    """Names must exist in timm's registry (ours included). Imports timm, so kept out of parsing."""
    for key, name in (
        ("teacher.model", params.teacher.model),
        ("student.model", params.student.model),
        ("student.baseline_model", params.student.baseline_model),
    ):
        if not timm.is_model(name):
            close = difflib.get_close_matches(name, timm.list_models(), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{key}='{name}' is not a timm model{hint}; allowed: any name in timm.list_models()")
