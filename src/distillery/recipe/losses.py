"""DeiT objectives as pure functions (see shared/notes/deit-facts.md).

Notation: z_c class-head logits, z_d distillation-head logits, z_t teacher logits,
`target` the true-label distribution (one-hot with label smoothing, or mixed by mixup/cutmix),
λ = alpha, τ = temperature.

- none: CE(z_c, target)
- control: (1-λ)·CE(z_c, target) + λ·CE(z_d, target)   (the distilled architecture, no teacher)
- soft: (1-λ)·CE(z_c, target) + λ·τ²·KL(softmax(z_t/τ) ‖ softmax(z_d/τ))
- hard: (1-λ)·CE(z_c, target) + λ·CE(z_d, argmax z_t)

Label smoothing reaches only the true-label term because it lives in `target`.
`kl_reduction="batchmean"` divides the summed KL by the batch size (the textbook KD loss, as in
timm's TokenDistillationTask); "numel" divides by batch × classes, as the DeiT reference code
does, which makes the soft term C times smaller.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

LossKind = str  # "none" | "control" | "soft" | "hard"
LOSS_KINDS = ("none", "control", "soft", "hard", "fake")
_LOG_FLOOR = 1e-8  # log(0) of an unsmoothed label's off-classes: a finite logit far below the others


@dataclass(frozen=True)
class DistillLoss:
    kind: LossKind = "none"
    alpha: float = 0.5
    tau: float = 1.0
    kl_reduction: str = "batchmean"

    def __post_init__(self) -> None:
        if self.kind not in LOSS_KINDS:
            raise ValueError(f"unknown loss kind '{self.kind}'; allowed: {', '.join(LOSS_KINDS)}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha={self.alpha} outside [0, 1]")
        if self.tau <= 0:
            raise ValueError(f"tau={self.tau} must be > 0")
        if self.kl_reduction not in ("batchmean", "numel"):
            raise ValueError(f"kl_reduction='{self.kl_reduction}'; allowed: batchmean, numel")

    @property
    def needs_teacher(self) -> bool:
        return self.kind in ("soft", "hard")

    @property
    def two_heads(self) -> bool:
        """Trains the distilled architecture: the loss reads both the class and the distillation head."""
        return self.kind != "none"

    def __call__(self, outputs, target: torch.Tensor, teacher_logits: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Returns the total loss and its parts (for logging)."""
        return self.terms(outputs, target, teacher_logits, self.alpha, self.tau)

    def group(self, outputs, target: torch.Tensor, teacher_logits: torch.Tensor | None,
              alpha: torch.Tensor, tau: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss of each member of a fused group: every input has a leading member dimension, and
        each member its own λ and τ; the same arithmetic as one member's loss, mapped over members."""
        if teacher_logits is None:
            return torch.func.vmap(lambda o, t, a, u: self.terms(o, t, None, a, u))(outputs, target, alpha, tau)
        return torch.func.vmap(self.terms)(outputs, target, teacher_logits, alpha, tau)

    def terms(self, outputs, target: torch.Tensor, teacher_logits: torch.Tensor | None,
              alpha: float | torch.Tensor, tau: float | torch.Tensor) -> dict[str, torch.Tensor]:
        if self.kind == "none":
            z_c = outputs[0] if isinstance(outputs, tuple) else outputs
            ce = soft_target_ce(z_c, target)
            return {"loss": ce, "ce": ce}
        z_c, z_d = outputs
        if self.kind == "control":
            ce, ce_dist = soft_target_ce(z_c, target), soft_target_ce(z_d, target)
            return {"loss": (1.0 - alpha) * ce + alpha * ce_dist, "ce": ce, "distill": ce_dist}
        if self.kind == "fake":
            ce = soft_target_ce(z_c, target)
            dist = soft_distillation_term(z_d, target.clamp_min(_LOG_FLOOR).log(), tau, self.kl_reduction)
            return {"loss": (1.0 - alpha) * ce + alpha * dist, "ce": ce, "distill": dist}
        if teacher_logits is None:
            raise ValueError(f"loss '{self.kind}' needs the teacher's logits")
        ce = soft_target_ce(z_c, target)
        if self.kind == "soft":
            dist = soft_distillation_term(z_d, teacher_logits, tau, self.kl_reduction)
        else:
            dist = hard_distillation_term(z_d, teacher_logits)
        total = (1.0 - alpha) * ce + alpha * dist
        return {"loss": total, "ce": ce, "distill": dist}


def soft_target_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against a target distribution (B, C), or hard labels (B,), batch mean."""
    if target.dim() == 1:
        return F.cross_entropy(logits, target)
    return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()


def soft_distillation_term(z_d: torch.Tensor, z_t: torch.Tensor, tau: float | torch.Tensor, reduction: str = "batchmean") -> torch.Tensor:
    """τ²·KL(softmax(z_t/τ) ‖ softmax(z_d/τ)), divided by batch size or by batch × classes."""
    # F.kl_div(log_s, log_t, reduction="sum", log_target=True) written out: the same sum, and it maps
    # over a fused group's members as one batched operation (kl_div has no vmap rule: a loop per member)
    log_s, log_t = F.log_softmax(z_d / tau, dim=-1), F.log_softmax(z_t / tau, dim=-1)
    kl = torch.sum(torch.exp(log_t) * (log_t - log_s))
    denom = z_d.shape[0] if reduction == "batchmean" else z_d.numel()
    return kl * (tau * tau) / denom


def hard_distillation_term(z_d: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
    """CE of the distillation head against the teacher's argmax (no label smoothing)."""
    return F.cross_entropy(z_d, z_t.argmax(dim=-1))


def smoothed_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """timm's convention: off-value smoothing/C, on-value 1 - smoothing + smoothing/C."""
    from timm.data.mixup import one_hot

    off = smoothing / num_classes
    return one_hot(labels, num_classes, on_value=1.0 - smoothing + off, off_value=off)
