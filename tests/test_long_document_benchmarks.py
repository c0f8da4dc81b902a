"""The long-document benchmarks measure the systems they name: each memory child generates the requested document,
the untrained stand-in is the baseline's size over the VAE's token table, the new_blocks sweep runs LongGeneration
at the setting it names, the length report scores every 512-token segment of both systems' documents, and the
context-use probe scores the same continuations after their true, shuffled and no context, and the infilling report
scores every method's middles, the AR baseline's prefix-only continuation among them."""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ldlm.baselines.causal_lm import CausalLM, load_baseline
from ldlm.data.corpus import restaurant_sentences
from ldlm.pipelines.long_generation import LongGeneration


def _tiny_ar(pipe) -> CausalLM:
    cfg = pipe.vae.config
    torch.manual_seed(0)
    model = CausalLM.tiny(vocab_size=cfg.vocab_size, d_embed=cfg.d_embed, eos_token_id=cfg.eos_token_id).eval()
    model.set_token_table(pipe.vae.token_table)
    return model


def _save_both(pipe, folder) -> None:
    """Save ``pipe`` to ``folder/pipe`` and a tiny AR model over its token table to ``folder/ar``."""
    pipe.save_pretrained(folder / "pipe")
    _tiny_ar(pipe).save_pretrained(folder / "ar" / "model")
    pipe.tokenizer.save_pretrained(folder / "ar" / "tokenizer")


def _documents(path, count: int, sentences: int):
    """A jsonl corpus of ``count`` documents of ``sentences`` built-in sentences each; returns ``path``."""
    path.write_text("".join(json.dumps({"text": " ".join(restaurant_sentences(sentences, seed=i))}) + "\n"
                            for i in range(count)))
    return path


def test_memory_children_generate_the_requested_document(make_pipeline, tmp_path, load_benchmark):
    memory = load_benchmark("memory")
    _save_both(make_pipeline(), tmp_path)
    common = dict(model=str(tmp_path / "pipe"), steps=2, threads=1, device="cpu", seed=0, ar_window=8)
    for system, trained in (("ar", str(tmp_path / "ar")), ("ar", None), ("ar-window", str(tmp_path / "ar"))):
        ar = memory.child(argparse.Namespace(system=system, ar=trained, **common), 40)  # None: the stand-in
        assert ar["tokens"] == 40 and ar["peak_mb"] >= ar["loaded_mb"] > 0
    ldlm = memory.child(argparse.Namespace(system="ldlm", ar=None, **common), 40)
    assert ldlm["tokens"] == 40 and ldlm["peak_mb"] >= ldlm["loaded_mb"] > 0


def test_untrained_baseline_is_the_small_preset_over_the_vae_table(make_pipeline):
    vae = make_pipeline().vae
    model, note = load_baseline(None, vae)
    assert "untrained" in note and not model.training
    assert model.config.hidden_size == CausalLM.small(vocab_size=vae.config.vocab_size).config.hidden_size
    assert torch.equal(model.token_table, vae.token_table.float())


def test_new_blocks_documents_and_speed_at_each_setting(make_pipeline, load_benchmark):
    new_blocks = load_benchmark("new_blocks")
    pipe = make_pipeline()
    args = argparse.Namespace(tokens=24, samples=3, steps=2, repeats=1, device="cpu", seed=0)
    window = pipe.transformer.config.max_blocks
    one, none = new_blocks.documents(pipe, 1, args), new_blocks.documents(pipe, window, args)
    assert len(one) == len(none) == 3 and all(one) and one != none
    assert new_blocks.tokens_per_s(pipe, 2, args) > 0


def test_new_blocks_samples_with_the_scheduler_it_is_given(make_pipeline, load_benchmark, tmp_path, monkeypatch):
    new_blocks = load_benchmark("new_blocks")
    make_pipeline().save_pretrained(tmp_path / "pipe")
    used = []

    def first_sample(pipe, *args):
        used.append(type(pipe.scheduler).__name__)
        raise SystemExit("sampled")

    monkeypatch.setattr(new_blocks, "tokens_per_s", first_sample)
    monkeypatch.setattr(sys, "argv", ["new_blocks.py", "--model", str(tmp_path / "pipe"), "--scheduler", "unipc",
                                      "--new-blocks", "1"])
    with pytest.raises(SystemExit, match="sampled"):
        new_blocks.main()
    assert used == ["UniPCMultistepScheduler"] != [type(make_pipeline().scheduler).__name__]


def test_length_report_scores_every_segment_of_both_systems(make_pipeline, load_benchmark, teacher_dirs, tmp_path,
                                                            monkeypatch):
    report = load_benchmark("longgen_report")
    _save_both(make_pipeline(), tmp_path)
    refs = _documents(tmp_path / "refs.jsonl", count=2, sentences=150)
    monkeypatch.setattr(sys, "argv", [
        "longgen_report.py", "--model", str(tmp_path / "pipe"), "--ar", str(tmp_path / "ar"), "--tokens", "1100",
        "--steps", "2", "--prompt", "Zizzi is a cheap coffee shop", "--max-repeat", "1", "--references", str(refs),
        "--holdout-every", "1", "--ar-window", "64", "--ppl-model", teacher_dirs["qwen2"], "--out",
        str(tmp_path / "long")])
    report.main()
    result = json.loads((tmp_path / "long.json").read_text())
    ldlm, ar = result["systems"]["ldlm"], result["systems"]["AR, T=1, window 64"]
    assert len(ldlm["gen_ppl"]) == len(ar["gen_ppl"]) == 2  # 1,100 tokens, prompt included: two whole segments
    assert ldlm["guard_rate"] == 0 and "guard_rate" not in ar  # the guard is off: the random model would loop
    assert ldlm["stops"] == ar["stops"] == ["length"]
    assert ldlm["last_over_first"] == ldlm["gen_ppl"][1] / ldlm["gen_ppl"][0]
    assert result["references"]["segments"] >= 2 and (tmp_path / "long.png").is_file()
    ratios = result["speed"]["ldlm"]["over_ar"]  # one pair: ldlm's document, then the AR's
    assert len(ratios) == 1 and ratios[0] > 0 and result["speed"]["ldlm"]["median"] == ratios[0]


def test_length_report_writes_at_each_step_count_in_turn_with_the_ar(make_pipeline, load_benchmark, tmp_path,
                                                                     teacher_dirs, monkeypatch):
    report = load_benchmark("longgen_report")
    _save_both(make_pipeline(), tmp_path)
    written, sampling = [], []
    for name in ("ldlm_document", "ar_document"):
        write = getattr(report, name)
        monkeypatch.setattr(report, name, lambda *a, write=write, name=name: written.append(
            (name, a[3] if name == "ldlm_document" else None)) or write(*a))
    start = LongGeneration.__init__
    monkeypatch.setattr(LongGeneration, "__init__", lambda self, pipe, *a, **kw: sampling.append(
        (kw["temperature"], type(pipe.scheduler).__name__)) or start(self, pipe, *a, **kw))
    monkeypatch.setattr(sys, "argv", [
        "longgen_report.py", "--model", str(tmp_path / "pipe"), "--ar", str(tmp_path / "ar"), "--tokens", "600",
        "--steps", "3", "2", "--documents", "2", "--max-repeat", "1", "--dit-temperature", "0.9",
        "--scheduler", "unipc", "--ppl-model", teacher_dirs["qwen2"], "--out", str(tmp_path / "long")])
    report.main()
    turn = [("ldlm_document", 3), ("ldlm_document", 2), ("ar_document", None)]
    assert written == turn + turn  # ldlm's documents sample at --dit-temperature, with --scheduler
    assert sampling == [(0.9, "UniPCMultistepScheduler")] * 4 and type(make_pipeline().scheduler).__name__ != (
        "UniPCMultistepScheduler")
    speed = json.loads((tmp_path / "long.json").read_text())["speed"]
    assert list(speed) == ["ldlm, 3 steps", "ldlm, 2 steps"] and all(len(s["over_ar"]) == 2 for s in speed.values())


def test_length_report_refuses_a_temperature_the_pipeline_would_before_loading_anything(tmp_path):
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "longgen_report.py"
    result = subprocess.run([sys.executable, str(script), "--model", str(tmp_path / "missing"), "--dit-temperature",
                             "3"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and result.stderr.strip() == (
        "--dit-temperature: temperature must be a number in (0, 2], got 3.0")  # not "no pipeline at …"


def test_context_use_arranges_windows_as_each_condition_says(load_benchmark):
    bench = load_benchmark("context_use")
    picked = bench.windows([list(range(100)), list(range(100, 130))], block=4, context=3, new=2, limit=10)
    assert len(picked) == 6 and picked[0].tolist() == list(range(20))  # 20-token windows: 5, and 1 from the short one
    assert [int(w[0]) for w in picked] == [0, 100, 20, 40, 60, 80]  # the documents in turn
    generator = torch.Generator().manual_seed(0)
    before, after = bench.arrange(picked[0], 4, 3, "true", generator)
    assert before.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]] and after.flatten().tolist() == list(
        range(12, 20))
    shuffled, same = bench.arrange(picked[0], 4, 3, "shuffled", generator)
    assert sorted(shuffled.tolist()) == before.tolist() and torch.equal(same, after)


def test_context_use_swaps_in_the_null_context_and_keeps_the_layout(make_pipeline, load_benchmark, monkeypatch):
    bench = load_benchmark("context_use")
    pipe = make_pipeline()  # windows of 6 blocks of 8 tokens, 2 latents per block
    calls = []
    forward = pipe.transformer.forward

    def spy(sample, timestep, self_cond=None, context_mask=None, drop_context=None):
        calls.append((sample.shape[1], context_mask[0].tolist(), drop_context.tolist()))
        return forward(sample, timestep, self_cond, context_mask, drop_context)

    monkeypatch.setattr(pipe.transformer, "forward", spy)
    before, after = torch.randint(5, 20, (3, 8)), torch.randint(5, 20, (3, 8))
    true = bench.dit_error(pipe, before, after, [500], seed=0)
    none = bench.dit_error(pipe, before, after, [500], seed=0, null_context=True)
    assert calls == [(12, [True] * 6 + [False] * 6, [False]), (12, [True] * 6 + [False] * 6, [True])]
    assert true != none


def test_context_use_writes_continuations_after_the_context_or_after_its_own(make_pipeline, load_benchmark,
                                                                            monkeypatch):
    bench = load_benchmark("context_use")
    pipe = make_pipeline()  # windows of 6 blocks of 8 tokens, 2 latents per block
    masks, outs, denoise = [], [], pipe.denoise

    def spy(known, known_mask, **kwargs):
        masks.append(known_mask.tolist())
        outs.append(denoise(known, known_mask, **kwargs))
        return outs[-1]

    monkeypatch.setattr(pipe, "denoise", spy)
    befores = torch.randint(5, 20, (2, 3, 8))
    after = bench.dit_continuations(pipe, befores, 3, steps=2, seed=0)
    own = bench.dit_continuations(pipe, befores, 3, steps=2, seed=0, written=True)
    assert len(after) == len(own) == 2
    assert masks == [[[True] * 6 + [False] * 6] * 2, [[False] * 12] * 2]  # the context flagged, or generated too
    assert not torch.allclose(outs[0][:, 6:], outs[1][:, 6:])  # so the continuations differ
    assert bench.dit_continuations(pipe, befores, 3, steps=2, seed=0) == after
    assert torch.equal(outs[2], outs[0])  # the same noise for a seed

    model = _tiny_ar(pipe)
    expected = model.generate(None, batch_size=2, max_new_tokens=24 + 5, generator=torch.Generator().manual_seed(0),
                              stop_at_eos=False)[:, -5:]
    own = bench.ar_continuations(model, pipe.tokenizer, befores, 5, seed=0, written=True)
    assert own == pipe.tokenizer.batch_decode(expected, skip_special_tokens=True)
    assert bench.ar_continuations(model, pipe.tokenizer, befores, 5, seed=0) != own


def test_context_use_ar_score_is_the_continuations_mean_nll(make_pipeline, load_benchmark):
    bench = load_benchmark("context_use")
    model = _tiny_ar(make_pipeline())
    before, after = torch.tensor([[5, 6, 7]]), torch.tensor([[8, 9]])
    ids = torch.tensor([[model.config.eos_token_id, 5, 6, 7, 8, 9]])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).float()[0], -1)
    expected = -(logp[3, 8] + logp[4, 9]) / 2
    assert bench.ar_nll(model, before, after) == pytest.approx(float(expected), rel=1e-5)


def test_context_use_scores_both_systems_in_every_condition(make_pipeline, load_benchmark, teacher_dirs, tmp_path,
                                                           monkeypatch):
    bench = load_benchmark("context_use")
    _save_both(make_pipeline(), tmp_path)
    refs = _documents(tmp_path / "refs.jsonl", count=3, sentences=12)
    monkeypatch.setattr(sys, "argv", ["context_use.py", "--model", str(tmp_path / "pipe"), "--ar", str(tmp_path / "ar"),
                                      "--references", str(refs), "--holdout-every", "1", "--windows", "4",
                                      "--timesteps", "200", "800", "--steps", "2", "--guidance-scale", "1", "3",
                                      "--ppl-model", teacher_dirs["qwen2"], "--out", str(tmp_path / "ctx")])
    bench.main()
    result = json.loads((tmp_path / "ctx.json").read_text())
    assert result["config"]["windows_used"] == 4 and result["config"]["new_blocks"] == 3  # half of a 6-block window
    for row in result["rows"].values():
        assert all(row[c] > 0 for c in bench.CONDITIONS) and row["none_over_true"] == row["none"] / row["true"]
    assert len(result["rows"]) == 2
    written = result["written"]
    assert list(written) == ["held-out continuation (scored after each context)",
                             "held-out continuation through ldlm's VAE (scored after each context)",
                             "ldlm, 2 steps: its continuation after the true context",
                             "ldlm, 2 steps, CFG 3: its continuation after the true context",
                             "AR, T=1: its continuation after the true context"]
    plain, guided = (written[f"ldlm, 2 steps{cfg}: its continuation after the true context"] for cfg in ("", ", CFG 3"))
    assert guided["true"] != plain["true"] and guided["none"] == plain["none"]  # no context: nothing to guide
    for row in written.values():
        assert all(row[c] > 0 for c in bench.CONDITIONS) and row["shuffled_over_true"] == row["shuffled"] / row["true"]
    assert [name for name, row in written.items() if "same_words_shuffled" in row] == list(written)[2:]


def test_context_use_word_similarity_counts_shared_words_in_order(load_benchmark):
    similarity = load_benchmark("context_use").word_similarity
    assert similarity(["the king said"], ["the king said"]) == 1.0
    assert similarity(["the king said"], ["and then they"]) == 0.0
    assert similarity(["a b c d", "a b"], ["a b x y", "b a"]) == (0.5 + 0.5) / 2  # order matters


@pytest.mark.parametrize("span", [[], ["--span-blocks", "10", "--ar-window", "16"]])
def test_infill_report_scores_each_method_and_the_ar_prefix_only(make_pipeline, load_benchmark, teacher_dirs,
                                                                 tmp_path, monkeypatch, span):
    bench = load_benchmark("infill_report")
    _save_both(make_pipeline(), tmp_path)
    refs = _documents(tmp_path / "refs.jsonl", count=4, sentences=12)
    monkeypatch.setattr(sys, "argv", ["infill_report.py", "--model", str(tmp_path / "pipe"), "--ar", str(tmp_path / "ar"),
                                      "--corpus", str(refs), "--holdout-every", "2", "--texts", "4", "--fixed-blocks",
                                      "1", "--steps", "2", "--ppl-model", teacher_dirs["qwen2"], "--out",
                                      str(tmp_path / "infill"), *span])
    bench.main()
    result = json.loads((tmp_path / "infill.json").read_text())
    first, truth, last = result["case"]
    assert len(truth.split()) > (6 * 8 if span else 2 * 8)  # a 10-block span's middle outgrows the 6-block window
    assert list(result["results"]) == ["condition", "replace", "prefix only", "AR, prefix only"]
    assert all(0 <= r["word_f1"] <= 1 and r["gen_ppl"] > 0 for r in result["results"].values())
    assert len(result["middles"]["AR, prefix only"]) == 2 and (tmp_path / "infill.png").is_file()
