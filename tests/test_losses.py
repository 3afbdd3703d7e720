"""Loss values against numbers derived by hand (closed forms, not torch)."""

import math

import pytest
import torch

from distillery.recipe.losses import DistillLoss, hard_distillation_term, smoothed_one_hot, soft_distillation_term, soft_target_ce

LN2 = math.log(2.0)


def logits_of(*weights):
    """Logits whose softmax is proportional to the given weights."""
    return torch.log(torch.tensor([list(weights)], dtype=torch.float64))


# z_c: softmax = [1/6, 2/6, 3/6]; z_d: [1/4, 1/4, 1/2]; z_t: [1/4, 1/2, 1/4] (argmax 1)
Z_C = logits_of(1, 2, 3)
Z_D = logits_of(1, 1, 2)
Z_T = logits_of(1, 2, 1)
Y = torch.tensor([2])


def test_ce_hard_label():
    assert soft_target_ce(Z_C, Y).item() == pytest.approx(LN2)  # -ln(3/6)


def test_ce_with_label_smoothing():
    target = smoothed_one_hot(Y, 3, 0.1)
    on, off = 0.9 + 0.1 / 3, 0.1 / 3
    assert target[0].tolist() == pytest.approx([off, off, on])
    expected = -(off * math.log(1 / 6) + off * math.log(2 / 6) + on * math.log(3 / 6))
    assert soft_target_ce(Z_C, target.double()).item() == pytest.approx(expected)


def test_soft_term_tau1_batchmean_and_numel():
    # KL(p_t || p_d) = 1/4 ln1 + 1/2 ln2 + 1/4 ln(1/2) = ln2 / 4
    assert soft_distillation_term(Z_D, Z_T, 1.0, "batchmean").item() == pytest.approx(LN2 / 4)
    assert soft_distillation_term(Z_D, Z_T, 1.0, "numel").item() == pytest.approx(LN2 / 12)  # / (B*C) = /3


def test_soft_term_tau2_scales_by_tau_squared():
    # At τ=2 the softmaxes are proportional to the square roots of the weights:
    # p_d = [1, 1, √2]/(2+√2), p_t = [1, √2, 1]/(2+√2); KL = (√2-1)/(2+√2) · ln√2; times τ² = 4.
    r2 = math.sqrt(2.0)
    kl = (r2 - 1) / (2 + r2) * math.log(r2)
    assert soft_distillation_term(Z_D, Z_T, 2.0, "batchmean").item() == pytest.approx(4 * kl)
    assert soft_distillation_term(Z_D, Z_T, 2.0, "numel").item() == pytest.approx(4 * kl / 3)


def test_hard_term_uses_teacher_argmax():
    # argmax z_t = 1; p_d[1] = 1/4 -> CE = ln 4
    assert hard_distillation_term(Z_D, Z_T).item() == pytest.approx(2 * LN2)


def test_batchmean_divides_by_batch_and_numel_by_batch_times_classes():
    # row 1: KL = ln2/4 (above); row 2: teacher equals the student, KL = 0
    zd, zt = torch.cat([Z_D, Z_D]), torch.cat([Z_T, Z_D])
    assert soft_distillation_term(zd, zt, 1.0, "batchmean").item() == pytest.approx(LN2 / 8)
    assert soft_distillation_term(zd, zt, 1.0, "numel").item() == pytest.approx(LN2 / 24)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_soft_total(alpha):
    loss = DistillLoss("soft", alpha=alpha, tau=1.0)
    parts = loss((Z_C, Z_D), Y, Z_T)
    assert parts["loss"].item() == pytest.approx((1 - alpha) * LN2 + alpha * LN2 / 4)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_hard_total(alpha):
    loss = DistillLoss("hard", alpha=alpha)
    parts = loss((Z_C, Z_D), Y, Z_T)
    assert parts["loss"].item() == pytest.approx((1 - alpha) * LN2 + alpha * 2 * LN2)


def test_label_smoothing_reaches_only_true_label_term():
    loss = DistillLoss("hard", alpha=0.5)
    plain = loss((Z_C, Z_D), smoothed_one_hot(Y, 3, 0.0).double(), Z_T)
    smooth = loss((Z_C, Z_D), smoothed_one_hot(Y, 3, 0.2).double(), Z_T)
    assert smooth["distill"].item() == pytest.approx(plain["distill"].item())
    assert smooth["ce"].item() != pytest.approx(plain["ce"].item())


def test_none_is_plain_ce_and_ignores_teacher():
    assert DistillLoss("none")(Z_C, Y)["loss"].item() == pytest.approx(LN2)


def test_tau_unused_by_hard():
    a = DistillLoss("hard", alpha=0.5, tau=1.0)((Z_C, Z_D), Y, Z_T)["loss"].item()
    b = DistillLoss("hard", alpha=0.5, tau=7.0)((Z_C, Z_D), Y, Z_T)["loss"].item()
    assert a == b


@pytest.mark.parametrize("kwargs", [{"kind": "medium"}, {"kind": "soft", "alpha": 1.5}, {"kind": "soft", "tau": 0.0},
                                    {"kind": "soft", "kl_reduction": "mean"}])
def test_invalid_loss_settings(kwargs):
    with pytest.raises(ValueError):
        DistillLoss(**kwargs)


def test_distillation_needs_teacher_logits():
    with pytest.raises(ValueError, match="teacher"):
        DistillLoss("soft")((Z_C, Z_D), Y, None)


def test_gradients_flow_to_both_heads_only_through_their_terms():
    z_c = Z_C.clone().requires_grad_(True)
    z_d = Z_D.clone().requires_grad_(True)
    DistillLoss("soft", alpha=0.0)((z_c, z_d), Y, Z_T)["loss"].backward()
    assert z_d.grad.abs().sum().item() == 0.0  # λ=0: the distillation head gets no signal
    assert z_c.grad.abs().sum().item() > 0.0


class _FixedStudent(torch.nn.Module):
    """Returns preset (class, distillation) logits; what timm's task needs of a DeiT student."""

    pretrained_cfg = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    num_classes = 5
    in_chans = 3

    def __init__(self, z_c, z_d):
        super().__init__()
        self.z = (z_c, z_d)

    def set_distilled_training(self, enable=True):
        pass

    def forward(self, x):
        return self.z


class _FixedTeacher(torch.nn.Module):
    def __init__(self, z_t):
        super().__init__()
        self.z_t = z_t

    def forward(self, x):
        return self.z_t


@pytest.mark.parametrize("kind, alpha, tau", [("soft", 0.5, 1.0), ("soft", 0.3, 3.0), ("hard", 0.5, 1.0), ("hard", 0.8, 1.0)])
def test_batchmean_losses_agree_with_timms_token_distillation_task(kind, alpha, tau):
    from timm.task import TokenDistillationTask

    g = torch.Generator().manual_seed(0)
    z_c, z_d, z_t = (torch.randn(6, 5, generator=g) for _ in range(3))
    y = torch.randint(0, 5, (6,), generator=g)
    task = TokenDistillationTask(_FixedStudent(z_c, z_d), _FixedTeacher(z_t), criterion=torch.nn.CrossEntropyLoss(),
                                 distill_type=kind, task_loss_weight=1 - alpha, temperature=tau, verbose=False)
    theirs = task(torch.zeros(6, 3, 4, 4), y)["loss"]
    ours = DistillLoss(kind, alpha=alpha, tau=tau, kl_reduction="batchmean")((z_c, z_d), y, z_t)["loss"]
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("alpha", [0.0, 0.4, 1.0])
def test_fake_teacher_is_soft_distillation_from_the_labels(alpha):
    # a (mixed or smoothed) label distribution [1/4, 1/2, 1/4] as the target: the fake teacher's softmax is
    # that distribution, so its term is soft's with Z_T: KL = ln2/4 at τ = 1
    target = torch.tensor([[0.25, 0.5, 0.25]], dtype=torch.float64)
    ce = -(0.25 * math.log(1 / 6) + 0.5 * math.log(2 / 6) + 0.25 * math.log(3 / 6))
    parts = DistillLoss("fake", alpha=alpha, tau=1.0)((Z_C, Z_D), target)
    assert parts["distill"].item() == pytest.approx(LN2 / 4)
    assert parts["loss"].item() == pytest.approx((1 - alpha) * ce + alpha * LN2 / 4)
    assert not DistillLoss("fake").needs_teacher


def test_fake_teacher_on_an_unsmoothed_label_is_the_cross_entropy():
    # one-hot on class 2: KL(onehot ‖ p_d) = −ln p_d[2] = ln 2 (the floored log(0) adds < 1e-6)
    parts = DistillLoss("fake", alpha=1.0, tau=1.0)((Z_C, Z_D), smoothed_one_hot(Y, 3, 0.0).double())
    assert parts["distill"].item() == pytest.approx(LN2, abs=1e-6)
