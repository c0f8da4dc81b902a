import pytest
import torch

from ldlm.align.losses import AlignmentHead, AlignmentSchedule, repa_loss, vavae_loss
from ldlm.align.teacher import FrozenTeacher


def test_identical_inputs_give_cosine_one():
    x = torch.randn(4, 3, 16)
    mask = torch.ones(4, 3)
    loss, cos = repa_loss(x, x.clone(), mask)
    assert cos.item() == pytest.approx(1.0, abs=1e-6) and loss.item() == pytest.approx(-1.0, abs=1e-6)
    loss, cos = vavae_loss(x, 2 * x, mask)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_inside_margins_is_zero_outside_is_not():
    torch.manual_seed(0)
    target = torch.randn(2, 4, 16)
    close = target + 0.3 * torch.randn_like(target)  # cosine ≈ 0.95 > 1 - m1
    assert vavae_loss(close, target, torch.ones(2, 4), margin_cos=0.5, margin_dist=0.5)[0].item() == 0.0
    far = torch.randn(2, 4, 16)
    assert vavae_loss(far, target, torch.ones(2, 4), margin_cos=0.5, margin_dist=0.1)[0].item() > 0.1


def test_mask_excludes_padding_latents():
    target = torch.randn(1, 2, 8)
    pred = torch.stack([target[0, 0], -target[0, 1]])[None]
    assert repa_loss(pred, target, torch.tensor([[1.0, 0.0]]))[1].item() == pytest.approx(1.0, abs=1e-6)


def test_no_gradient_reaches_the_teacher(teacher_dirs):
    teacher = FrozenTeacher(teacher_dirs["qwen3"], layers=[2])
    feats = teacher(torch.randint(4, 60, (2, 8)))[0].reshape(2, 2, 4, 32).mean(2)
    assert not feats.requires_grad
    head = AlignmentHead(8, 32, hidden=16)
    latents = torch.randn(2, 2, 8, requires_grad=True)
    loss, _ = repa_loss(head(latents), feats, torch.ones(2, 2))
    loss.backward()
    assert latents.grad is not None and head.net[0].weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())


def test_schedule_warms_up_and_switches_off():
    schedule = AlignmentSchedule(weight=0.5, warmup_steps=10, stop_step=100)
    assert schedule(0) == pytest.approx(0.05) and schedule(50) == 0.5 and schedule(100) == 0.0
