import json
import subprocess
import sys

import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from ldlm.cli import main
from ldlm.dit.model import LatentDiT
from ldlm.dit.objective import FLOW_SCHEDULERS, VP_SCHEDULERS, make_scheduler
from ldlm.errors import LdlmError
from ldlm.pipelines.latent_diffusion import LatentDiffusionLMPipeline, echo, hold
from ldlm.pipelines.loading import load_pipeline, load_vae


def _seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("objective,names", [("vp", list(VP_SCHEDULERS)), ("flow", list(FLOW_SCHEDULERS))])
def test_every_scheduler_samples_3d_latents(make_pipeline, objective, names):
    for name in names:
        pipe = make_pipeline(objective, name)
        out = pipe(batch_size=3, num_blocks=4, num_inference_steps=4, generator=_seeded())
        assert out.latents.shape == (3, 8, 8), name
        assert torch.isfinite(out.latents).all(), name
        assert len(out.texts) == 3 and all(isinstance(t, str) for t in out.texts)


def test_same_seed_same_text_and_latent_output(make_pipeline):
    pipe = make_pipeline()
    a = pipe(batch_size=2, num_inference_steps=5, generator=_seeded(1))
    b = pipe(batch_size=2, num_inference_steps=5, generator=_seeded(1))
    c = pipe(batch_size=2, num_inference_steps=5, generator=_seeded(2))
    assert a.texts == b.texts and torch.equal(a.latents, b.latents)
    assert not torch.equal(a.latents, c.latents)
    latent = pipe(batch_size=2, num_inference_steps=5, generator=_seeded(1), output_type="latent")
    assert latent.texts is None and torch.equal(latent.latents, a.latents)
    texts, _ = pipe(batch_size=2, num_inference_steps=5, generator=_seeded(1), return_dict=False)
    assert texts == a.texts


def test_save_and_load_in_a_fresh_process_gives_identical_text(make_pipeline, tmp_path):
    pipe = make_pipeline()
    pipe.save_pretrained(tmp_path / "pipe")
    expected = pipe(batch_size=3, num_inference_steps=6, generator=_seeded(7)).texts
    code = (
        "import json, torch\n"
        "from ldlm.pipelines.latent_diffusion import LatentDiffusionLMPipeline\n"
        f"pipe = LatentDiffusionLMPipeline.from_pretrained({str(tmp_path / 'pipe')!r})\n"
        "pipe.set_progress_bar_config(disable=True)\n"
        "print(json.dumps(pipe(batch_size=3, num_inference_steps=6,"
        " generator=torch.Generator().manual_seed(7)).texts))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == expected


def test_scheduler_swap(make_pipeline):
    pipe = make_pipeline()
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert len(pipe(num_inference_steps=3, generator=_seeded()).texts) == 1
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    with pytest.raises(ValueError, match="trained as vp/v_prediction"):
        pipe(num_inference_steps=3)
    pipe.scheduler = DDIMScheduler(beta_schedule="linear", prediction_type="v_prediction", clip_sample=False)
    with pytest.raises(ValueError, match="linear schedule"):
        pipe(num_inference_steps=3)


def test_prompt_conditioning_and_guidance(make_pipeline):
    pipe = make_pipeline()
    tok, cfg = pipe.tokenizer, pipe.vae.config
    long_prompt = "The Eagle is a cheap coffee shop serving Italian food in the riverside."  # 1 full block + 5
    short_prompt = "Zizzi is a pub"  # a partial block only
    out = pipe([long_prompt, short_prompt], num_blocks=4, num_inference_steps=5, num_samples_per_prompt=2,
               generator=_seeded())
    assert len(out.texts) == 4
    assert out.texts[0].startswith(long_prompt) and out.texts[3].startswith(short_prompt)
    # the prompt's complete block stays exactly the clean encoding of its tokens
    ids = torch.tensor(tok(long_prompt, add_special_tokens=False)["input_ids"][: cfg.block_length])
    clean = pipe.vae.encode(ids[None], torch.ones_like(ids)[None])[0]
    torch.testing.assert_close(out.latents[0, : cfg.latents_per_block], clean, atol=1e-5, rtol=1e-5)
    guided = pipe([long_prompt, short_prompt], num_blocks=4, num_inference_steps=5, num_samples_per_prompt=2,
                  guidance_scale=3.0, generator=_seeded())
    assert guided.texts[0].startswith(long_prompt)
    assert not torch.allclose(guided.latents[:, 2:], out.latents[:, 2:])
    # without complete prompt blocks there is no context to guide against
    plain = pipe(batch_size=4, num_blocks=4, num_inference_steps=5, generator=_seeded())
    unconditional = pipe(batch_size=4, num_blocks=4, num_inference_steps=5, guidance_scale=3.0, generator=_seeded())
    assert torch.equal(unconditional.latents, plain.latents)


def test_partial_prompt_blocks_are_held_to_the_prompt_tokens(make_pipeline, monkeypatch):
    pipe = make_pipeline()
    prompt = "Zizzi is a cheap pub"  # 5 tokens: a partial block only, so every one-block encoding is a hold
    tail = pipe.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    held = []
    encode = pipe.vae.encode_sequence

    def spy(ids, mask=None):
        held.append(ids[0, : len(tail)].tolist())
        return encode(ids, mask)

    monkeypatch.setattr(pipe.vae, "encode_sequence", spy)
    pipe(prompt, num_blocks=3, num_inference_steps=4, generator=_seeded())
    assert len(held) == 4 + 1 and all(ids == tail for ids in held)  # every step, and the final latents


@pytest.mark.parametrize("tokens,ids,expected", [
    ([1, 2, 3, 4, 5, 3, 7, 8, 0, 9], [1, 2, 3, 7], [1, 2, 3, 7, 8, 0, 9, 0, 0, 0]),  # its own "3 7" three tokens on
    ([1, 2, 3, 7, 3, 7, 8, 0, 9, 9], [1, 2, 3, 7], [1, 2, 3, 7, 8, 0, 9, 9, 0, 0]),  # said right after the held ones
    ([1, 2, 3, 4, 5, 6, 3, 7, 0, 9], [1, 2, 3, 7], [1, 2, 3, 7, 0, 9, 0, 0, 0, 0]),  # as far as it is looked for
    ([1, 2, 3, 4, 5, 6, 8, 3, 7, 0], [1, 2, 3, 7], [1, 2, 3, 7, 5, 6, 8, 3, 7, 0]),  # beyond: overwritten only
    ([1, 2, 3, 4, 5, 6, 7, 8, 0, 9], [1, 2, 3, 7], [1, 2, 3, 7, 5, 6, 7, 8, 0, 9]),  # no copy of the pair
    ([1, 2, 3, 4, 5, 3, 7, 8, 6, 5], [1, 2, 3, 7], [1, 2, 3, 7, 5, 3, 7, 8, 6, 5]),  # no EOS: the text goes on
    ([1, 2, 3, 4, 5, 0, 3, 7, 9, 9], [1, 2, 3, 7], [1, 2, 3, 7, 5, 0, 3, 7, 9, 9]),  # the EOS before the copy stays
    ([1, 2, 3, 4, 0, 3, 7, 8, 0, 9], [1, 2, 3, 7], [1, 2, 3, 7, 0, 3, 7, 8, 0, 9]),  # likewise right after the hold
    ([1, 2, 7, 5, 0, 9, 9, 9, 9, 9], [1, 7], [1, 7, 5, 0, 9, 9, 9, 9, 9, 0]),  # the last one said again at once
    ([4, 7, 5, 6, 0, 9, 9, 9, 9, 9], [7], [7, 5, 6, 0, 9, 9, 9, 9, 9, 0]),  # a one-token hold, likewise
    ([4, 5, 7, 6, 0, 9, 9, 9, 9, 9], [7], [7, 5, 7, 6, 0, 9, 9, 9, 9, 9]),  # but not further on: no pair to find
])
def test_hold_writes_the_held_tokens_and_drops_the_estimate_s_copy_of_their_end(tokens, ids, expected):
    assert hold(tokens, ids, eos_id=0) == expected


@pytest.mark.parametrize("tokens,ids,shift", [
    ([1, 2, 3, 4, 5, 3, 7, 8], [1, 2, 3, 7], 3), ([1, 2, 3, 7, 3, 7, 8], [1, 2, 3, 7], 2),
    ([1, 2, 3, 4, 5, 6, 3, 7], [1, 2, 3, 7], 4), ([1, 2, 3, 4, 5, 6, 8, 3, 7], [1, 2, 3, 7], 0),
    ([1, 2, 3, 4, 7, 5], [1, 2, 3, 7], 1), ([4, 7, 5], [7], 1), ([4, 5, 7], [7], 0), ([1, 2, 3], [1, 2, 3], 0),
])
def test_echo_finds_the_estimate_s_copy_of_the_held_end(tokens, ids, shift):
    assert echo(tokens, ids) == shift


def _held_estimate(pipe, monkeypatch, estimate: torch.Tensor) -> tuple[list, list]:
    """Make the pipeline's VAE decode every window to ``estimate`` (from the window's first block; the test holds
    block 0) and encode to zeros; returns the logs of decoded window sizes and encoded (blocks, mask)."""
    k, length = pipe.vae.config.latents_per_block, pipe.vae.config.block_length
    decoded, encoded = [], []

    def decode(x):
        start = len(decoded) and 1  # the first call reads the held block, a second the blocks after it
        decoded.append(x.shape[1] // k)
        return estimate[start * length : (start + x.shape[1] // k) * length][None]

    monkeypatch.setattr(pipe.vae, "decode_sequence", decode)
    monkeypatch.setattr(pipe.vae, "encode_sequence", lambda blocks, mask: encoded.append((blocks, mask)) or
                        torch.zeros(len(blocks), k, pipe.vae.config.latent_channels))
    return decoded, encoded


def test_a_held_prompt_moves_the_text_up_over_the_estimate_s_copy_to_the_window_end(make_pipeline, monkeypatch):
    pipe = make_pipeline()
    cfg = pipe.vae.config
    k, length, eos, pad = cfg.latents_per_block, cfg.block_length, cfg.eos_token_id, cfg.pad_token_id
    ids, body = [11, 12, 13], [20] * (length - 5)
    estimate = torch.tensor([11, 12, 14, 12, 13, *body, 21, 22, eos] + [pad] * (length - 3) + [eos] * length)
    decoded, encoded = _held_estimate(pipe, monkeypatch, estimate)  # block 0 says "12 13" again
    x0 = torch.ones(2, 3 * k, cfg.latent_channels)
    out = pipe._hold_tokens(x0, [{0: ids}, {}], torch.zeros(2, 3 * k, dtype=torch.bool))  # row 1 holds nothing
    (blocks, mask), = encoded  # blocks 0 and 1 moved up two tokens; block 2 (EOS only) is as it was
    assert blocks.tolist() == [ids + body + [21, 22], [eos] + [pad] * (length - 3) + [eos] * 2]
    assert mask.tolist() == [[1] * length, [1] + [0] * (length - 1)]
    assert decoded == [1, 2] and (out[0, : 2 * k] == 0).all() and (out[0, 2 * k :] == 1).all()
    assert (out[1] == 1).all()


def test_a_held_prompt_before_a_known_block_is_only_overwritten(make_pipeline, monkeypatch):
    pipe = make_pipeline()
    cfg = pipe.vae.config
    k, length, eos, pad = cfg.latents_per_block, cfg.block_length, cfg.eos_token_id, cfg.pad_token_id
    ids, body = [11, 12, 13], [20] * (length - 5)
    estimate = torch.tensor([11, 12, 14, 12, 13, *body, 21, 22, eos] + [pad] * (length - 3) + [30] * length)
    decoded, encoded = _held_estimate(pipe, monkeypatch, estimate)
    x0 = torch.ones(1, 3 * k, cfg.latent_channels)
    known = torch.zeros(1, 3 * k, dtype=torch.bool)
    known[0, 2 * k :] = True  # block 2 is fixed text: nothing moves towards it
    out = pipe._hold_tokens(x0, [{0: ids}], known)
    (blocks, mask), = encoded
    assert blocks.tolist() == [ids + [12, 13] + body] and mask.tolist() == [[1] * length]
    assert decoded == [1] and (out[0, :k] == 0).all() and (out[0, k:] == 1).all()


@pytest.mark.parametrize("index", [0, 1])
def test_decode_blocks_reads_the_blocks_with_a_context_decoder_s_neighbours(make_pipeline, index):
    pipe = make_pipeline()
    pipe.vae = pipe.vae.with_context(1)
    x = torch.randn(4 * pipe.vae.config.latents_per_block, pipe.vae.config.latent_channels)
    length = pipe.vae.config.block_length
    whole = pipe.vae.decode_sequence(x[None])[0]
    for stop in range(index + 1, 5):
        assert torch.equal(pipe._decode_blocks(x, index, stop), whole[index * length : stop * length])


@pytest.mark.parametrize("kwargs,message", [
    ({"num_blocks": 0}, "num_blocks"), ({"num_blocks": 7}, "num_blocks"), ({"num_inference_steps": 0}, "steps"),
    ({"guidance_scale": -1}, "guidance_scale"), ({"output_type": "pil"}, "output_type"),
    ({"prompt": 3}, "prompt"), ({"prompt": []}, "prompt"), ({"prompt": "a " * 200}, "leaves no room"),
    ({"num_samples_per_prompt": 0}, "num_samples"), ({"batch_size": 0}, "batch_size"),
    ({"prompt": "x", "batch_size": 2}, "either prompt or batch_size"),
])
def test_bad_arguments(make_pipeline, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_pipeline()(num_inference_steps=kwargs.pop("num_inference_steps", 2), **kwargs)


def test_generate_cli(make_pipeline, tmp_path, capsys):
    make_pipeline().save_pretrained(tmp_path / "pipe")
    model = str(tmp_path / "pipe")
    assert main(["generate", "--model", model, "--num-samples", "2", "--steps", "3", "--seed", "4",
                 "--scheduler", "ddim", "--prompt", "Aromi is a pub in the city centre. It is", "--guidance-scale", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("Aromi is a pub in the city centre. It is") for line in lines)
    for args, message in [(["--steps", "0"], "--steps must be a positive integer"), (["--scheduler", "flow-euler"], "trained as"),
                          (["--scheduler", "magic"], "unknown scheduler"), (["--num-blocks", "99"], "num_blocks")]:
        assert main(["generate", "--model", model, *args]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert main(["generate", "--model", str(tmp_path)]) == 2
    assert "no pipeline" in capsys.readouterr().err


class _GaussianOracle(LatentDiT):
    """The exact denoiser for data x0 ~ N(mu, tau²) per coordinate: E[x0 | x_t] in closed form."""

    mu, tau = 1.5, 0.5

    def forward(self, sample, timestep, self_cond=None, context_mask=None, drop_context=None):
        a, s = self.objective._coefficients(timestep, sample)
        x0 = self.mu + a * self.tau**2 / (a**2 * self.tau**2 + s**2) * (sample - a * self.mu)
        return self.objective.from_x0(sample, x0, timestep)


@pytest.mark.parametrize("name", [*VP_SCHEDULERS, *FLOW_SCHEDULERS])
def test_samplers_draw_the_data_distribution_of_an_exact_denoiser(vae_dir, name):
    from ldlm.dit.objective import DiffusionObjective

    vae, tokenizer = load_vae(vae_dir)
    objective = "flow" if name in FLOW_SCHEDULERS else "vp"
    oracle = _GaussianOracle.tiny(latent_channels=8, latents_per_block=2, max_blocks=4, objective=objective)
    scheduler = make_scheduler(name)
    oracle.objective = DiffusionObjective.from_scheduler(scheduler)
    pipe = LatentDiffusionLMPipeline(vae, oracle, scheduler, tokenizer)
    pipe.set_progress_bar_config(disable=True)
    steps = 200 if name == "ddpm" else 20  # ancestral DDPM loses variance at coarse steps, even with a perfect model
    out = pipe(batch_size=256, num_blocks=4, num_inference_steps=steps, generator=_seeded(), output_type="latent")
    x = vae.standardize(out.latents)
    assert abs(float(x.mean()) - oracle.mu) < 0.05, name
    assert abs(float(x.std()) - oracle.tau) < 0.05, name


def test_a_clipping_scheduler_is_refused(make_pipeline):
    pipe = make_pipeline()
    pipe.scheduler = DDIMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
    with pytest.raises(ValueError, match="clip_sample=False"):
        pipe(num_inference_steps=2)


def test_given_starting_latents_replace_the_drawn_noise(make_pipeline):
    pipe = make_pipeline()
    noise = torch.randn(2, 8, 8, generator=_seeded(3))
    drawn = pipe(batch_size=2, num_blocks=4, num_inference_steps=3, generator=_seeded(3))
    given = pipe(batch_size=2, num_blocks=4, num_inference_steps=3, latents=noise)
    assert given.texts == drawn.texts and torch.equal(given.latents, drawn.latents)
    with pytest.raises(ValueError, match="latents must have the shape"):
        pipe(batch_size=2, num_blocks=4, num_inference_steps=3, latents=noise[:1])


def test_temperature_scales_the_starting_noise(make_pipeline):
    pipe = make_pipeline()
    noise = torch.randn(2, 12, 8, generator=torch.Generator().manual_seed(3))
    sample = lambda latents, **kw: pipe(batch_size=2, num_inference_steps=3, latents=latents,  # noqa: E731
                                        output_type="latent", **kw).latents
    cold = sample(noise, temperature=0.5)
    assert torch.equal(cold, sample(0.5 * noise)) and not torch.allclose(cold, sample(noise))


def test_the_default_temperature_is_saved_with_the_pipeline_and_used_by_every_entry_point(make_pipeline, tmp_path):
    from ldlm.pipelines.long_generation import LongGeneration

    pipe = make_pipeline()
    assert pipe.config.temperature == 1.0
    type(pipe)(pipe.vae, pipe.transformer, pipe.scheduler, pipe.tokenizer, temperature=0.5).save_pretrained(
        tmp_path / "cold")
    cold = LatentDiffusionLMPipeline.from_pretrained(tmp_path / "cold")
    cold.set_progress_bar_config(disable=True)
    assert cold.config.temperature == 0.5
    calls = {
        "call": lambda p, **kw: p(batch_size=2, num_inference_steps=3, output_type="latent", **kw).latents,
        "infill": lambda p, **kw: p.infill(["The Eagle", None], num_inference_steps=3, output_type="latent",
                                           **kw).latents,
        "long": lambda p, **kw: LongGeneration(p, None, num_documents=2, new_blocks=2, num_inference_steps=2,
                                               **kw).fixed_ids(20),
    }
    for name, call in calls.items():
        default = call(cold, generator=_seeded())
        assert torch.equal(default, call(cold, generator=_seeded(), temperature=0.5)), name
        assert not torch.equal(default, call(cold, generator=_seeded(), temperature=1.0)), name
    with pytest.raises(ValueError, match="temperature must be a number in"):
        type(pipe)(pipe.vae, pipe.transformer, pipe.scheduler, pipe.tokenizer, temperature=3.0)
    index = json.loads((tmp_path / "cold" / "model_index.json").read_text())
    del index["temperature"]  # saved before the pipeline saved one
    (tmp_path / "cold" / "model_index.json").write_text(json.dumps(index))
    assert LatentDiffusionLMPipeline.from_pretrained(tmp_path / "cold").config.temperature == 1.0


@pytest.mark.parametrize("command", [
    ["generate", "--num-samples", "3"], ["infill", "The Eagle", "_"], ["longgen", "--max-tokens", "40"]])
def test_the_cli_samples_at_the_pipeline_temperature_unless_told(make_pipeline, tmp_path, capsys, command):
    pipe = make_pipeline()
    type(pipe)(pipe.vae, pipe.transformer, pipe.scheduler, pipe.tokenizer, temperature=0.5).save_pretrained(
        tmp_path / "cold")
    output = tmp_path / "doc.txt"

    def texts(*extra: str) -> str:
        write = ["--output", str(output), "--overwrite"] if command[0] == "longgen" else []
        assert main([*command, "--model", str(tmp_path / "cold"), "--steps", "3", *write, *extra]) == 0
        return output.read_text() if write else capsys.readouterr().out

    default = texts()
    assert default == texts("--temperature", "0.5") and default != texts("--temperature", "1.5")


@pytest.mark.parametrize("command", [
    ["generate", "--num-samples", "2"], ["infill", "The Eagle", "_"], ["longgen", "--max-tokens", "40"]])
def test_every_generating_command_samples_with_the_scheduler_it_is_given(make_pipeline, tmp_path, capsys, monkeypatch,
                                                                         command):
    from ldlm.pipelines import loading

    make_pipeline().save_pretrained(tmp_path / "pipe")
    load, used = loading.load_pipeline, []

    def recorded(*args):
        pipe = load(*args)
        used.append(type(pipe.scheduler).__name__)
        return pipe

    monkeypatch.setattr(loading, "load_pipeline", recorded)
    write = ["--output", str(tmp_path / "doc.txt"), "--overwrite"] if command[0] == "longgen" else []
    base = [*command, "--model", str(tmp_path / "pipe"), "--steps", "3", *write]
    assert main([*base, "--scheduler", "unipc"]) == 0 and main(base) == 0
    assert used[0] == "UniPCMultistepScheduler" != used[1]
    assert main([*base, "--scheduler", "magic"]) == 2 and "unknown scheduler" in capsys.readouterr().err


def test_step_callback_sees_and_can_replace_the_latents(make_pipeline):
    pipe = make_pipeline()
    calls = []

    def callback(pipe_, i, t, values):
        calls.append(i)
        return {"latents": torch.zeros_like(values["latents"])}

    out = pipe(batch_size=2, num_inference_steps=3, callback_on_step_end=callback, generator=_seeded())
    assert calls == [0, 1, 2] and torch.isfinite(out.latents).all()


@pytest.mark.parametrize("snap,steps,snapped", [(0.0, 5, 0), (0.4, 5, 2), (1.0, 5, 5), (0.5, 3, 2)])
def test_snap_moves_the_clean_estimate_onto_the_code_in_the_last_steps(make_pipeline, snap, steps, snapped):
    pipe = make_pipeline()
    calls = []
    original = pipe.vae.snap_sequence

    def spy(latents):
        calls.append(latents.shape)
        return original(latents)

    pipe.vae.snap_sequence = spy
    out = pipe(batch_size=2, num_blocks=4, num_inference_steps=steps, generator=_seeded(), snap=snap)
    assert len(calls) == snapped and torch.isfinite(out.latents).all()
    plain = pipe(batch_size=2, num_blocks=4, num_inference_steps=steps, generator=_seeded())
    assert torch.equal(out.latents, plain.latents) == (snapped == 0)


def test_snap_keeps_known_blocks_in_infilling(make_pipeline):
    pipe = make_pipeline()
    segments = ["alpha beta gamma delta epsilon zeta eta theta", None]
    a = pipe.infill(segments, num_inference_steps=3, generator=_seeded(), snap=1.0, output_type="latent")
    known, known_mask, _ = pipe.encode_layout(pipe._infill_layout(segments, 1))
    k = known_mask.sum()
    torch.testing.assert_close(pipe.vae.standardize(a.latents[0, :k]), known[:k])


@pytest.mark.parametrize("snap", [-0.1, 1.5, float("nan"), True, "all"])
def test_bad_snap_is_refused(make_pipeline, snap):
    with pytest.raises(ValueError, match="snap"):
        make_pipeline()(batch_size=1, num_inference_steps=2, snap=snap)


def _with_weak(pipe, seed: int = 1, **config) -> LatentDiffusionLMPipeline:
    """``pipe`` with a random tiny weak transformer (``config`` overrides its shape)."""
    torch.manual_seed(seed)
    weak = LatentDiT.tiny(**{**pipe.transformer.config, "hidden_size": 32, "num_layers": 1, **config})
    for p in weak.parameters():
        torch.nn.init.normal_(p, std=0.05)
    pipe.weak_transformer = weak
    return pipe


def _first_clean_estimate(pipe, **kwargs) -> torch.Tensor:
    seen = []
    noise = torch.randn(2, 8, 8, generator=_seeded(5))
    pipe(batch_size=2, num_blocks=4, num_inference_steps=3, latents=noise, callback_on_step_end_tensor_inputs=("x0",),
         callback_on_step_end=lambda p, i, t, values: seen.append(values["x0"]) or {}, **kwargs)
    return seen[0]


@pytest.mark.parametrize("weight", [1.5, 3.0])
def test_autoguidance_extrapolates_from_the_weak_to_the_strong_estimate(make_pipeline, weight):
    pipe = _with_weak(make_pipeline())
    strong = _first_clean_estimate(pipe, autoguidance=1.0)
    guided = _first_clean_estimate(pipe, autoguidance=weight)
    pipe.transformer = pipe.weak_transformer
    weak = _first_clean_estimate(pipe, autoguidance=1.0)
    assert not torch.allclose(strong, weak, atol=1e-3)
    torch.testing.assert_close(guided, weak + weight * (strong - weak), rtol=1e-4, atol=1e-4)


def test_autoguidance_off_never_runs_the_weak_transformer(make_pipeline, monkeypatch):
    plain = make_pipeline()(batch_size=2, num_inference_steps=3, generator=_seeded())
    pipe = _with_weak(make_pipeline())
    monkeypatch.setattr(pipe.weak_transformer, "forward", lambda *a, **k: pytest.fail("weak transformer ran"))
    out = pipe(batch_size=2, num_inference_steps=3, generator=_seeded())
    assert out.texts == plain.texts and torch.equal(out.latents, plain.latents)


def test_autoguidance_applies_to_both_branches_of_classifier_free_guidance(make_pipeline):
    pipe = _with_weak(make_pipeline())
    prompt = "The Eagle is a cheap coffee shop serving Italian food in the riverside."
    kwargs = dict(num_blocks=4, num_inference_steps=3, guidance_scale=2.0, output_type="latent")
    off = pipe(prompt, generator=_seeded(), **kwargs).latents
    on = pipe(prompt, generator=_seeded(), autoguidance=2.0, **kwargs).latents
    assert torch.isfinite(on).all() and not torch.allclose(on, off)


def test_the_default_weight_and_the_weak_transformer_are_saved_with_the_pipeline(make_pipeline, tmp_path):
    pipe = _with_weak(make_pipeline())
    pipe.register_to_config(autoguidance=2.5)
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = LatentDiffusionLMPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.autoguidance == 2.5 and isinstance(loaded.weak_transformer, LatentDiT)
    default = loaded(batch_size=2, num_inference_steps=3, generator=_seeded(), output_type="latent").latents
    explicit = pipe(batch_size=2, num_inference_steps=3, generator=_seeded(), autoguidance=2.5,
                    output_type="latent").latents
    off = loaded(batch_size=2, num_inference_steps=3, generator=_seeded(), autoguidance=1,
                 output_type="latent").latents
    assert torch.equal(default, explicit) and not torch.equal(default, off)
    make_pipeline().save_pretrained(tmp_path / "plain")  # no weak transformer: autoguidance is off by default
    plain = LatentDiffusionLMPipeline.from_pretrained(tmp_path / "plain")
    assert plain.weak_transformer is None and plain.config.autoguidance == 1.0


def test_the_dits_load_in_another_dtype_with_the_vae_in_fp32(make_pipeline, tmp_path, capsys):
    _with_weak(make_pipeline()).save_pretrained(tmp_path / "pipe")
    pipe = load_pipeline(tmp_path / "pipe", dtype="bfloat16")
    assert pipe.transformer.dtype == pipe.weak_transformer.dtype == torch.bfloat16 and pipe.vae.dtype == torch.float32
    out = pipe(batch_size=2, num_inference_steps=3, autoguidance=2.0, generator=_seeded())
    assert len(out.texts) == 2 and out.latents.dtype == torch.float32 and torch.isfinite(out.latents).all()
    with pytest.raises(LdlmError, match="dtype must be one of"):
        load_pipeline(tmp_path / "pipe", dtype="int8")
    assert main(["generate", "--model", str(tmp_path / "pipe"), "--num-samples", "2", "--steps", "3",
                 "--dtype", "bfloat16"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2
    assert main(["generate", "--model", str(tmp_path / "pipe"), "--steps", "3", "--dtype", "int8"]) == 2
    err = capsys.readouterr().err
    assert "dtype must be one of" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("weak,weight,message", [
    (None, 2.0, "needs a weak_transformer"), ({"latent_channels": 4}, 2.0, "latent_channels"),
    ({"max_blocks": 2}, 2.0, "max_blocks"), ({"prediction_type": "epsilon"}, 2.0, "prediction_type"),
    ({}, 0.5, "autoguidance"), ({}, float("nan"), "autoguidance"), ({}, True, "autoguidance"),
])
def test_bad_autoguidance_is_refused(make_pipeline, weak, weight, message):
    pipe = make_pipeline() if weak is None else _with_weak(make_pipeline(), **weak)
    with pytest.raises(ValueError, match=message):
        pipe(batch_size=1, num_inference_steps=2, autoguidance=weight)


def test_autoguidance_cli(make_pipeline, tmp_path, capsys):
    _with_weak(make_pipeline()).save_pretrained(tmp_path / "weak")
    make_pipeline().save_pretrained(tmp_path / "plain")
    assert main(["generate", "--model", str(tmp_path / "weak"), "--num-samples", "2", "--steps", "3",
                 "--autoguidance", "2"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2
    for model, weight, message in [("weak", "0.5", "--autoguidance must be"), ("plain", "2", "needs a weak_transformer")]:
        assert main(["generate", "--model", str(tmp_path / model), "--steps", "3", "--autoguidance", weight]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
