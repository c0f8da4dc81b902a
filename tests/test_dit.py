import pytest
import torch

from ldlm.dit.model import LatentDiT
from ldlm.dit.objective import DiffusionObjective


def test_shapes_and_presets():
    model = LatentDiT.tiny(latent_channels=8, latents_per_block=2, max_blocks=4)
    x = torch.randn(3, 8, 8)
    assert model(x, torch.tensor([0, 500, 999])).shape == (3, 8, 8)
    assert model(x[:, :2], 10.0).shape == (3, 2, 8)
    assert LatentDiT.small().num_parameters() > 5 * LatentDiT.tiny().num_parameters()
    with pytest.raises(ValueError, match="not 1..4 blocks"):
        model(torch.randn(1, 10, 8), 1)
    with pytest.raises(ValueError, match="not 1..4 blocks"):
        model(torch.randn(1, 3, 8), 1)


def test_adaln_zero_blocks_are_identity_at_init():
    model = LatentDiT.tiny(latent_channels=8, latents_per_block=2, max_blocks=4)
    x, c = torch.randn(2, 8, 64), torch.randn(2, 64)
    for block in model.blocks:
        assert torch.equal(block(x, c), x)
    assert torch.count_nonzero(model(torch.randn(2, 8, 8), 3)) == 0
    # once the modulation trains, a block is no longer the identity
    torch.nn.init.normal_(model.blocks[0].ada[1].weight, std=0.1)
    assert not torch.allclose(model.blocks[0](x, c), x)


def test_context_and_null_condition_reach_the_output():
    torch.manual_seed(0)
    model = LatentDiT.tiny(latent_channels=8, latents_per_block=2, max_blocks=4)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(2, 8, 8)
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[:, :2] = True
    plain = model(x, 5, context_mask=mask)
    dropped = model(x, 5, context_mask=mask, drop_context=torch.tensor([True, False]))
    assert not torch.allclose(plain[0], dropped[0]) and torch.allclose(plain[1], dropped[1])
    assert not torch.allclose(plain, model(x, 5))
    assert not torch.allclose(plain, model(x, 5, self_cond=torch.randn_like(x), context_mask=mask))


@pytest.mark.parametrize("objective,prediction", [("vp", "epsilon"), ("vp", "v_prediction"), ("vp", "sample"),
                                                   ("flow", "v_prediction")])
def test_objective_conversions_are_consistent(objective, prediction):
    obj = DiffusionObjective(objective, prediction, timestep_sampling="logit_normal")
    x0, noise = torch.randn(64, 6, 4), torch.randn(64, 6, 4)
    t = obj.sample_timesteps(64, torch.device("cpu"))
    assert t.min() >= 0 and t.max() < 1000
    t = t.clamp(5, 990)
    x_t = obj.add_noise(x0, noise, t)
    target = obj.target(x0, noise, t)
    torch.testing.assert_close(obj.to_x0(x_t, target, t), x0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(obj.from_x0(x_t, x0, t), target, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("objective,prediction", [("vp", "epsilon"), ("vp", "v_prediction"), ("vp", "sample"),
                                                   ("flow", "v_prediction")])
def test_min_snr_weights_the_clean_latent_error_by_min_snr_gamma(objective, prediction):
    """weight(t)·|output error|² = min(SNR, γ)·|clean-latent error|² for every parametrization, and no weighting
    without γ."""
    gamma = 5.0
    obj = DiffusionObjective(objective, prediction, min_snr_gamma=gamma)
    t = torch.tensor([10.0, 200.0, 500.0, 800.0, 990.0])
    x0, noise, error = torch.randn(5, 6, 4), torch.randn(5, 6, 4), 1e-2 * torch.randn(5, 6, 4)
    x_t = obj.add_noise(x0, noise, t)
    x0_error = obj.to_x0(x_t, obj.target(x0, noise, t) + error, t) - x0
    a, s = obj._coefficients(t, t)
    expected = (a / s).pow(2).clamp(max=gamma) * x0_error.pow(2).sum((1, 2))
    torch.testing.assert_close(obj.loss_weight(t) * error.pow(2).sum((1, 2)), expected, rtol=1e-3, atol=1e-7)
    assert obj.loss_weight(t).max() <= gamma + 1e-6
    assert torch.equal(DiffusionObjective(objective, prediction).loss_weight(t), torch.ones(5))


def test_vp_noising_matches_diffusers_scheduler():
    from diffusers import DDPMScheduler

    obj = DiffusionObjective("vp", "v_prediction")
    scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
    x0, noise, t = torch.randn(8, 4, 3), torch.randn(8, 4, 3), torch.randint(0, 1000, (8,))
    torch.testing.assert_close(obj.add_noise(x0, noise, t), scheduler.add_noise(x0, noise, t))
    torch.testing.assert_close(obj.target(x0, noise, t), scheduler.get_velocity(x0, noise, t))


def test_ddim_step_matches_diffusers_and_its_inverse_recovers_the_estimate():
    from ldlm.dit.objective import make_scheduler

    scheduler = make_scheduler("ddim")
    scheduler.set_timesteps(10)
    obj = DiffusionObjective.from_scheduler(scheduler)
    x_t, output = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    for t in scheduler.timesteps:  # 999, 899, …, 99 → −1: the last step ends clean
        t, t_prev = t.expand(2), (t - 100).expand(2)
        x0 = obj.to_x0(x_t, output, t)
        stepped = obj.ddim_step(x_t, x0, t, t_prev)
        torch.testing.assert_close(stepped, scheduler.step(output, t[0], x_t).prev_sample, atol=1e-5, rtol=0)
        torch.testing.assert_close(obj.ddim_x0(x_t, stepped, t, t_prev), x0, atol=1e-4, rtol=0)
    torch.testing.assert_close(stepped, x0)


def test_bad_objective_arguments():
    with pytest.raises(ValueError, match="objective"):
        DiffusionObjective("ddpm")
    with pytest.raises(ValueError, match="prediction_type"):
        DiffusionObjective("vp", "x0")
    with pytest.raises(ValueError, match="timestep_sampling"):
        DiffusionObjective("vp", timestep_sampling="cosine")
    with pytest.raises(ValueError, match="min_snr_gamma"):
        DiffusionObjective("vp", min_snr_gamma=0.0)


def _ada_calls(model: LatentDiT) -> list[int]:
    """A list that grows by one each time a block's adaLN modulation is computed."""
    calls = []
    for block in model.blocks:
        block.ada.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_the_modulation_is_reused_at_inference_until_the_weights_change():
    def random_model(seed: int) -> LatentDiT:
        torch.manual_seed(seed)
        model = LatentDiT.tiny(latent_channels=8, latents_per_block=2, max_blocks=4)
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.2)
        return model

    model, other = random_model(0), random_model(1)
    calls, x = _ada_calls(model), torch.randn(3, 8, 8)
    with torch.no_grad():
        first = model(x, torch.full((3,), 7))
        assert len(calls) == 2 and torch.equal(model(x, torch.full((3,), 7)), first) and len(calls) == 2
        model(x, 8)  # another timestep is computed
        assert len(calls) == 4
    torch.testing.assert_close(model(x, 7), first, rtol=1e-4, atol=1e-4)  # with autograd: computed every time
    assert len(calls) == 6
    with torch.no_grad():
        model.blocks[1].ada[1].weight.mul_(2)  # an in-place update (an optimizer or EMA step) voids the memo
        assert not torch.allclose(model(x, 7), first) and len(calls) == 8
        model.t_embed[0].weight.mul_(2)  # and the timestep embedding's
        fresh = random_model(0)
        fresh.load_state_dict(model.state_dict())
        assert torch.equal(model(x, 7), fresh(x, 7)) and len(calls) == 10
        model.load_state_dict(other.state_dict())  # new weights copied in
        assert torch.equal(model(x, 7), other(x, 7)) and len(calls) == 12
        model(x, torch.tensor([7, 8, 7]))  # rows at different timesteps: computed for the batch, not kept
        assert len(calls) == 14 and len(model.memo.values) == 1


def test_a_model_made_under_inference_mode_samples_without_the_memo():
    with torch.inference_mode():
        model = LatentDiT.tiny(latent_channels=8, latents_per_block=2, max_blocks=4)
        torch.nn.init.normal_(model.out.weight, std=0.2)
        x = torch.randn(2, 8, 8)
        first = model(x, 5)
        torch.nn.init.normal_(model.blocks[0].ada[1].weight, std=0.2)  # an update no version counter records
        assert not torch.equal(model(x, 5), first) and not model.memo.values


def test_training_still_reaches_the_modulation_weights():
    model = LatentDiT.tiny(latent_channels=8, latents_per_block=2, max_blocks=4)
    torch.nn.init.normal_(model.out.weight, std=0.2)
    with torch.no_grad():
        model(torch.randn(2, 8, 8), 5)  # memoized
    model(torch.randn(2, 8, 8), 5).square().sum().backward()
    assert all(block.ada[1].weight.grad is not None for block in model.blocks)


def _cached_model(seed: int = 0) -> LatentDiT:
    torch.manual_seed(seed)
    model = LatentDiT.tiny(latent_channels=8, latents_per_block=2, max_blocks=4, cached_context=True)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return model


def test_a_cached_context_is_read_but_reads_only_itself_at_timestep_zero():
    model, x = _cached_model(), torch.randn(3, 8, 8)
    mask = torch.zeros(3, 8, dtype=torch.bool)
    mask[:, :4] = True
    other = x.clone()
    other[:, 4:] = torch.randn(3, 4, 8)
    out, moved = model(x, 7, context_mask=mask), model(other, 7, context_mask=mask)
    assert torch.equal(out[:, :4], moved[:, :4])  # the context's computation never sees the positions to denoise
    torch.testing.assert_close(out[:, :4], model(x, 300, context_mask=mask)[:, :4])  # nor their timestep
    other = x.clone()
    other[:, :4] = torch.randn(3, 4, 8)
    assert not torch.allclose(out[:, 4:], model(other, 7, context_mask=mask)[:, 4:])  # but they read it
    plain = LatentDiT.tiny(latent_channels=8, latents_per_block=2, max_blocks=4)
    plain.load_state_dict(model.state_dict())  # the same weights read the context as any position
    assert not torch.allclose(plain(x, 7, context_mask=mask), out)
    torch.testing.assert_close(plain(x, 7), model(x, 7))  # and without context they are the same model


def test_the_context_is_computed_once_at_inference_and_gives_the_full_computation():
    model, x = _cached_model(), torch.randn(3, 8, 8)
    mask = torch.zeros(3, 8, dtype=torch.bool)
    mask[:, :4] = True
    drop = torch.tensor([False, True, False])
    full = model(x, torch.full((3,), 7), context_mask=mask, drop_context=drop)  # with autograd: one joint pass
    calls = []
    model._context = (lambda compute: lambda inputs: calls.append(1) or compute(inputs))(model._context)
    with torch.no_grad():
        first = model(x, 7, context_mask=mask, drop_context=drop)
        torch.testing.assert_close(first, full, rtol=1e-4, atol=1e-4)
        steps = [model(torch.where(mask[..., None], x, torch.randn_like(x)), t, context_mask=mask,
                       drop_context=drop) for t in (500, 300, 100)]
        assert len(calls) == 1 and all(torch.equal(step[:, :4], first[:, :4]) for step in steps)
        model(x, 7, context_mask=mask)  # another context (none dropped): computed again
        changed = x.clone()
        changed[0, 0] += 1e-3
        model(changed, 7, context_mask=mask)
        assert len(calls) == 3
        model.blocks[0].attn.qkv.weight.mul_(2)  # an in-place update voids the memo
        torch.testing.assert_close(model(changed, 7, context_mask=mask), model(changed, 7, context_mask=mask))
        assert len(calls) == 4
        ragged = mask.clone()
        ragged[0, 4:6] = True  # rows with different context positions: one joint pass, nothing kept
        joint = model(x, 7, context_mask=ragged)
        assert len(calls) == 4
    torch.testing.assert_close(joint, model(x, 7, context_mask=ragged), rtol=1e-4, atol=1e-4)


def test_a_model_fsdp_shards_runs_every_forward_whole(monkeypatch):
    """Every rank must run the same forwards: no context kept from an earlier one, no memoized modulation."""
    import ldlm.dit.model as dit_model

    model, x = _cached_model(), torch.randn(3, 8, 8)
    mask = torch.zeros(3, 8, dtype=torch.bool)
    mask[:, :4] = True
    monkeypatch.setattr(dit_model, "_fsdp_module", lambda: LatentDiT)  # as if every LatentDiT were sharded
    calls = []
    model._context = lambda inputs: calls.append(1)
    with torch.no_grad():
        out = model(x, 7, context_mask=mask)
    assert not calls and not model.memo.values
    torch.testing.assert_close(out, model(x, 7, context_mask=mask), rtol=1e-4, atol=1e-4)
