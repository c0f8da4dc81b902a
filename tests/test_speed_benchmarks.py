"""The speed and efficiency benchmarks measure what they claim: ldlm's timed path does LongGeneration's work, the
profile's parts add up, and the counted DiT FLOPs match the analytic count."""
import torch

from ldlm.dit.model import LatentDiT
from ldlm.pipelines.long_generation import LongGeneration


def _recording(pipe) -> list[torch.Tensor]:
    outputs, denoise = [], pipe.denoise

    def spy(*args, **kwargs):
        outputs.append(denoise(*args, **kwargs))
        return outputs[-1]

    pipe.denoise = spy
    return outputs


def test_timed_ldlm_path_runs_longgeneration_groups_for_exactly_the_requested_tokens(make_pipeline, load_benchmark):
    speed = load_benchmark("speed")
    pipe = make_pipeline()
    length, window = pipe.vae.config.block_length, pipe.transformer.config.max_blocks
    ours = _recording(pipe)
    ids = speed.ldlm_ids(pipe, 2, 8 * length, 2, None, torch.Generator().manual_seed(0))
    assert ids.shape == (2, 8 * length) and len(ours) == 3  # ⌈8 blocks / 3 new blocks⌉ groups
    pipe = make_pipeline()
    shipped = _recording(pipe)
    list(LongGeneration(pipe, None, max_tokens=8 * length, num_documents=2, num_inference_steps=2, stop_at_eos=False,
                        max_repeat=1.0, retries=0, generator=torch.Generator().manual_seed(0)))
    assert len(shipped) >= len(ours) and all(torch.equal(a, b) for a, b in zip(ours, shipped))
    assert speed.ldlm_ids(pipe, 3, window * length, 2, None, torch.Generator()).shape == (3, window * length)


def test_profile_parts_add_up_and_the_timers_are_removed(make_pipeline, load_benchmark):
    speed = load_benchmark("speed")
    pipe = make_pipeline()
    result = speed.profile(pipe, None, torch.device("cpu"), 0)
    assert abs(sum(result["parts"].values()) - result["seconds"]) < 1e-6
    assert result["parts"]["DiT forward"] > 0 and result["parts"]["vocabulary projection (vae.logits)"] > 0
    assert "logits" not in vars(pipe.vae) and "forward" not in vars(pipe.transformer)


def test_counted_dit_flops_match_the_analytic_count(load_benchmark):
    efficiency = load_benchmark("efficiency")
    dit = LatentDiT.tiny(latent_channels=8, latents_per_block=2, max_blocks=3).eval()
    inputs = efficiency.dit_inputs(dit, 3, 6, torch.device("cpu"))
    with torch.no_grad():
        counted = efficiency.counted_flops(lambda: dit(*inputs))
    assert counted == efficiency.analytic_flops(dit.config, 3, 6)
