"""The speed and efficiency benchmarks measure what they claim: ldlm's timed path does LongGeneration's work, the
profile's parts add up, timing is interleaved and its paired ratios are summarised with their spread (and distrusted
when it is too wide), and the counted DiT FLOPs match the analytic count."""
import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

from ldlm.baselines.causal_lm import CausalLM
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
    # the same group shapes; the first group (no context yet) is the same draw. Later groups differ in context only:
    # without EOS, LongGeneration encodes its context again from the text it wrote
    assert len(shipped) >= len(ours) and all(a.shape == b.shape for a, b in zip(ours, shipped))
    assert torch.equal(ours[0], shipped[0])
    assert speed.ldlm_ids(pipe, 3, window * length, 2, None, torch.Generator()).shape == (3, window * length)


def test_profile_parts_add_up_and_the_timers_are_removed(make_pipeline, load_benchmark):
    speed = load_benchmark("speed")
    pipe = make_pipeline()
    result = speed.profile(pipe, None, torch.device("cpu"), 0)
    assert abs(sum(result["parts"].values()) - result["seconds"]) < 1e-6
    assert result["parts"]["DiT forward"] > 0 and result["parts"]["vocabulary projection (vae.logits)"] > 0
    assert result["parts"]["weak DiT forward (autoguidance)"] == 0
    assert "logits" not in vars(pipe.vae) and "forward" not in vars(pipe.transformer)


def test_profile_times_the_weak_transformer_of_autoguidance_apart(make_pipeline, load_benchmark):
    speed = load_benchmark("speed")
    pipe = make_pipeline()
    pipe.weak_transformer = LatentDiT.tiny(**{**pipe.transformer.config, "hidden_size": 32, "num_layers": 1})
    pipe.register_to_config(autoguidance=2.0)
    result = speed.profile(pipe, None, torch.device("cpu"), 0)
    assert abs(sum(result["parts"].values()) - result["seconds"]) < 1e-6
    assert result["parts"]["weak DiT forward (autoguidance)"] > 0 and "forward" not in vars(pipe.weak_transformer)


def test_counted_dit_flops_match_the_analytic_count(load_benchmark):
    efficiency = load_benchmark("efficiency")
    dit = LatentDiT.tiny(latent_channels=8, latents_per_block=2, max_blocks=3).eval()
    inputs = efficiency.dit_inputs(dit, 3, 6, torch.device("cpu"))
    assert efficiency.counted_flops(lambda: dit(*inputs)) == efficiency.analytic_flops(dit.config, 3, 6)
    with torch.no_grad():  # as a sampler calls it, the timestep's modulation memoized
        dit(*inputs)
        counted = efficiency.counted_flops(lambda: dit(*inputs))
    assert counted == efficiency.analytic_flops(dit.config, 3, 6, modulation=False)


@pytest.fixture
def common(load_benchmark):
    """``benchmarks/bench_common.py`` imported as the scripts import it (``load_benchmark`` puts its folder on the
    path)."""
    return importlib.import_module("bench_common")


def test_interleaved_timing_alternates_the_calls(common):
    calls = []
    times = common.interleaved_seconds([lambda: calls.append("A"), lambda: calls.append("B")], 3, torch.device("cpu"))
    assert calls == ["A", "B"] * 3 and [len(t) for t in times] == [3, 3] and min(map(min, times)) >= 0


def test_output_paths_keep_a_dotted_name_and_replace_a_json_or_png_ending(common, tmp_path):
    assert common.out_path(tmp_path / "T0.9", ".json") == tmp_path / "T0.9.json"  # two runs, two files
    assert common.out_path(str(tmp_path / "T0.95"), ".png") == tmp_path / "T0.95.png"
    assert common.out_path(tmp_path / "speed.json", ".png") == tmp_path / "speed.png"
    assert common.out_path(tmp_path / "speed.png", ".json") == tmp_path / "speed.json"
    assert common.out_path("docs/img/speed", ".json") == Path("docs/img/speed.json")


def test_ratio_summary_gives_the_median_quartiles_and_range(common):
    summary = common.summarize([3.4, 3.0, 3.2, 3.3, 3.1])
    assert summary.record() == pytest.approx({"median": 3.2, "q1": 3.05, "q3": 3.35, "min": 3.0, "max": 3.4,
                                              "pairs": 5, "doubt": None})
    assert summary.describe() == "3.20 (IQR 3.05–3.35, range 3.00–3.40, 5 pairs)"
    with pytest.raises(ValueError, match="at least 3"):
        common.summarize([3.0, 3.1])


@pytest.mark.parametrize("ratios, doubt", [([0.5, 0.9, 1.1, 1.5, 2.0], "crosses 1×"),  # IQR 0.70–1.75
                                           ([2.0, 3.0, 4.0, 5.0, 6.0], "wider than 25% of the median")])  # 2.5–5.5
def test_a_spread_too_wide_is_not_trusted(common, ratios, doubt):
    summary = common.summarize(ratios)
    assert doubt in summary.doubt and f"NOT TRUSTWORTHY: {summary.doubt}" in summary.describe()


@pytest.mark.parametrize("device", ["cpux", "cuda:x"])
def test_setup_refuses_an_unknown_device(common, device):
    with pytest.raises(SystemExit, match="unknown device"):
        common.setup(device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_setup_refuses_cuda_without_a_gpu(common):
    with pytest.raises(SystemExit, match="CUDA is not available"):
        common.setup("cuda")


def _save_pipeline_and_tiny_ar(pipe, folder) -> None:
    cfg = pipe.vae.config
    torch.manual_seed(0)
    ar = CausalLM.tiny(vocab_size=cfg.vocab_size, d_embed=cfg.d_embed, eos_token_id=cfg.eos_token_id).eval()
    ar.set_token_table(pipe.vae.token_table)
    pipe.save_pretrained(folder / "pipe")
    ar.save_pretrained(folder / "ar" / "model")
    pipe.tokenizer.save_pretrained(folder / "ar" / "tokenizer")


def test_speed_headline_is_the_median_paired_ratio_with_its_spread(make_pipeline, load_benchmark, tmp_path,
                                                                   monkeypatch, capsys):
    speed = load_benchmark("speed")
    _save_pipeline_and_tiny_ar(make_pipeline(), tmp_path)
    monkeypatch.setattr(sys, "argv", ["speed.py", "--model", str(tmp_path / "pipe"), "--ar", str(tmp_path / "ar"),
                                      "--steps", "2", "--tokens", "16", "--batch-sizes", "1", "--repeats", "1",
                                      "--pairs", "3", "--out", str(tmp_path / "speed")])
    speed.main()
    result = json.loads((tmp_path / "speed.json").read_text())
    rounds = {(r["steps"], r["tokens"]): len(r["speedups"]) for r in result["rows"] if r["system"] == "ldlm"}
    assert rounds == {(2, 16): 1, (10, 16): 1, (2, 256): 3, (10, 256): 3}  # the headline cell gets --pairs rounds
    headline = next(r for r in result["rows"] if r["system"] == "ldlm" and (r["steps"], r["tokens"]) == (10, 256))
    spread = result["speedup@10steps_spread"]
    assert result["speedup@10steps"] == spread["median"] == sorted(headline["speedups"])[1] and spread["pairs"] == 3
    assert (tmp_path / "speed.png").is_file()
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(f"speedup@10steps: {spread['median']:.2f} (IQR ") and "3 pairs" in last


def test_speed_times_the_ar_with_a_sliding_cache_when_asked(make_pipeline, load_benchmark, tmp_path, monkeypatch):
    speed = load_benchmark("speed")
    _save_pipeline_and_tiny_ar(make_pipeline(), tmp_path)
    windows = []
    generate = CausalLM.generate
    monkeypatch.setattr(CausalLM, "generate", lambda self, *a, **kw: windows.append(kw["window"]) or generate(
        self, *a, **kw))
    monkeypatch.setattr(sys, "argv", ["speed.py", "--model", str(tmp_path / "pipe"), "--ar", str(tmp_path / "ar"),
                                      "--steps", "2", "--tokens", "16", "--batch-sizes", "1", "--repeats", "1",
                                      "--pairs", "3", "--ar-window", "8", "--out", str(tmp_path / "speed")])
    speed.main()
    assert windows and set(windows) == {8}
    assert json.loads((tmp_path / "speed.json").read_text())["ar_window"] == 8
    monkeypatch.setattr(sys, "argv", ["speed.py", "--ar-window", "0", "--model", "/nonexistent"])
    with pytest.raises(SystemExit, match="--ar-window must be at least 1"):
        speed.main()


def test_speed_refuses_too_few_pairs_before_loading(load_benchmark, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["speed.py", "--pairs", "2", "--model", "/nonexistent"])
    with pytest.raises(SystemExit, match="--pairs at least 3"):
        load_benchmark("speed").main()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_timed_paths_run_on_cuda(make_pipeline, load_benchmark):
    speed = load_benchmark("speed")
    pipe, device = make_pipeline().to("cuda"), torch.device("cuda")
    cfg = pipe.vae.config
    ar = CausalLM.tiny(vocab_size=cfg.vocab_size, d_embed=cfg.d_embed, eos_token_id=cfg.eos_token_id).eval().to(device)
    length = 8 * cfg.block_length  # past the window: LongGeneration's groups
    ids = speed.ldlm_ids(pipe, 2, length, 2, None, torch.Generator(device).manual_seed(0))
    assert ids.shape == (2, length) and ids.is_cuda
    assert speed.ar_ids(ar, 2, length, torch.Generator(device).manual_seed(0)).shape[0] == 2
    assert speed.peak_mib(lambda: speed.ldlm_ids(pipe, 1, length, 2, None, torch.Generator(device)), device) > 0
