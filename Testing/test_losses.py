"""Property tests of the focal, SSIM, IoU and hybrid losses."""

from __future__ import annotations

import pytest
import torch

from FusionLungSegLib.training.losses import DeepSupervisionLoss, FocalLoss, HybridLoss, IoULoss, SSIMLoss


def _target(seed=0, size=32):
    g = torch.Generator().manual_seed(seed)
    t = torch.zeros(2, 1, size, size)
    t[:, :, 8:24, 6:20] = 1
    t[1, :, 2:6, 24:30] = (torch.rand(4, 6, generator=g) > 0.3).float()
    return t


def _logits_from(prob):
    return torch.logit(prob.clamp(1e-4, 1 - 1e-4))


LOSSES = [FocalLoss(), SSIMLoss(), IoULoss(), HybridLoss()]


@pytest.mark.parametrize("loss", LOSSES, ids=lambda m: type(m).__name__)
def test_near_zero_for_a_perfect_prediction(loss):
    t = _target()
    perfect = (t * 2 - 1) * 20.0  # confident, correct logits
    assert float(loss(perfect, t)) < 1e-3


@pytest.mark.parametrize("loss", LOSSES, ids=lambda m: type(m).__name__)
def test_worse_predictions_cost_more(loss):
    t = _target()
    good = _logits_from(t * 0.9 + 0.05)
    noisy = _logits_from((t * 0.9 + 0.05) * 0.5 + 0.25)
    wrong = _logits_from((1 - t) * 0.9 + 0.05)
    l_good, l_noisy, l_wrong = (float(loss(x, t)) for x in (good, noisy, wrong))
    assert l_good < l_noisy < l_wrong


@pytest.mark.parametrize("loss", LOSSES, ids=lambda m: type(m).__name__)
def test_gradients_are_finite_even_for_saturated_logits(loss):
    t = _target()
    logits = torch.cat([torch.full((1, 1, 32, 32), 80.0), torch.full((1, 1, 32, 32), -80.0)]).requires_grad_()
    value = loss(logits, t)
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0 or float(value) == 0


def test_hybrid_is_the_weighted_sum_and_weights_are_configurable():
    t = _target()
    x = torch.randn(2, 1, 32, 32)
    parts = FocalLoss()(x, t), SSIMLoss()(x, t), IoULoss()(x, t)
    expected = 0.3 * parts[0] + 0.4 * parts[1] + 0.3 * parts[2]
    assert torch.allclose(HybridLoss()(x, t), expected)
    only_iou = HybridLoss(w_focal=0, w_ssim=0, w_iou=1)
    assert torch.allclose(only_iou(x, t), parts[2])


def test_deep_supervision_sums_over_refined_and_side_outputs():
    t = _target()
    outs = [torch.randn(2, 1, 32, 32) for _ in range(5)]
    base = HybridLoss()
    total = DeepSupervisionLoss(base)(outs, t)
    assert torch.allclose(total, sum(base(o, t) for o in outs))
    weighted = DeepSupervisionLoss(base, weights=[1, 0, 0, 0, 0])(outs, t)
    assert torch.allclose(weighted, base(outs[0], t))
    with pytest.raises(ValueError):
        DeepSupervisionLoss(base, weights=[1, 1])(outs, t)
