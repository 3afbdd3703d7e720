"""Model builders (teacher, distilled student, plain ViT) and checkpoints that rebuild themselves.

Small images (8-32 px) make timm's ImageNet CNNs collapse the feature map to nothing, so we
register two small CNNs in timm's registry: they are then chosen by name like any timm model.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn
from timm.models import register_model

import difflib

from ..core.config import Params
from ..core.errors import ConfigError


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
        except Exception as exc:  # network, missing weights, hub errors: all end the same way for the user
            raise ConfigError(
                f"teacher.pretrained=true could not fetch timm weights for '{model}' "
                f"({type(exc).__name__}: {exc}); it needs the internet, or give a local checkpoint path"
            ) from None
        return net, spec
    net = spec.build(seed)
    if isinstance(pretrained, str):
        load_partial_state(net, Path(pretrained))
    return net, spec


def load_partial_state(net: nn.Module, path: Path) -> list[str]:
    """Fine-tuning start: copy every tensor whose name and shape match; report the head that did not."""
    if not path.exists():
        raise ConfigError(f"teacher.pretrained='{path}' does not exist; allowed: false, true or a checkpoint path")
    blob = torch.load(path, map_location="cpu", weights_only=False)
    state = blob.get("state_dict", blob.get("model", blob)) if isinstance(blob, dict) else blob
    if not isinstance(state, dict):
        raise ConfigError(f"teacher.pretrained='{path}' holds no state dict")
    own = net.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(k for k in state if k not in matched)
    if len(matched) < len(own) // 2:
        raise ConfigError(
            f"teacher.pretrained='{path}' matches only {len(matched)} of {len(own)} tensors of the model; "
            "is it a checkpoint of teacher.model?"
        )
    net.load_state_dict(matched, strict=False)
    if skipped:
        print(f"fine-tuning from {path}: re-initialised {len(skipped)} tensor(s) that differ: {', '.join(skipped[:6])}")
    return skipped


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
def save_model(path: Path, net: nn.Module, spec: ModelSpec, extra: dict[str, Any] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"spec": {"kind": spec.kind, "name": spec.name, "kwargs": spec.kwargs},
            "state_dict": net.state_dict(), "extra": extra or {}}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)


def load_model(path: Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, ModelSpec, dict[str, Any]]:
    if not path.exists():
        raise ConfigError(f"model checkpoint '{path}' not found; run the stage that writes it first")
    blob = torch.load(path, map_location=map_location, weights_only=False)
    spec = ModelSpec(**blob["spec"])
    net = spec.build()
    net.load_state_dict(blob["state_dict"])
    return net, spec, blob.get("extra", {})


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
