"""The code-distance benchmark: its reference curve grows with noise, samples are cut at their EOS block, and a
distance is placed on the curve by interpolation."""
import json
import sys

import pytest
import torch

from ldlm.data.corpus import restaurant_sentences


def test_sigma_equivalent_interpolates_on_the_curve(load_benchmark):
    bench = load_benchmark("code_distance")
    curve = [(0.0, 0.1), (0.5, 0.4), (1.0, 0.6)]
    assert bench.sigma_equivalent(curve, 0.25) == pytest.approx(0.25)
    assert bench.sigma_equivalent(curve, 0.5) == pytest.approx(0.75)
    assert bench.sigma_equivalent(curve, 0.9) is None and bench.sigma_equivalent(curve, 0.05) == 0.0


def test_samples_are_cut_after_their_eos_block(make_pipeline, load_benchmark, monkeypatch):
    bench = load_benchmark("code_distance")
    vae = make_pipeline().vae
    cfg = vae.config  # blocks of 8 tokens, 2 latents each
    ids = torch.full((2, 24), 5)
    ids[0, 9] = cfg.eos_token_id  # in the second block
    monkeypatch.setattr(vae, "decode_sequence", lambda latents: ids)
    latents = torch.randn(2, 6, cfg.latent_channels)
    cut = bench.text_blocks(vae, latents)
    assert [len(z) for z in cut] == [4, 6] and torch.equal(cut[0], latents[0, :4])


def test_benchmark_writes_the_curve_and_the_sample_rows(make_pipeline, load_benchmark, tmp_path, monkeypatch):
    bench = load_benchmark("code_distance")
    make_pipeline().save_pretrained(tmp_path / "pipe")
    refs = tmp_path / "refs.jsonl"
    refs.write_text("".join(json.dumps({"text": t}) + "\n" for t in restaurant_sentences(20)))
    monkeypatch.setattr(sys, "argv", ["code_distance.py", "--model", str(tmp_path / "pipe"), "--references",
                                      str(refs), "--samples", "6", "--sigmas", "0", "2", "--steps", "2",
                                      "--out", str(tmp_path / "cd")])
    bench.main()
    rows = json.loads((tmp_path / "cd.json").read_text())["rows"]
    assert list(rows) == ["references, σ=0", "references, σ=2", "ldlm, 2 steps"]
    assert rows["references, σ=2"]["distance"] > rows["references, σ=0"]["distance"]
    assert rows["ldlm, 2 steps"]["distance"] > 0
