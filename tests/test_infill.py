import pytest
import torch

from ldlm.cli import main
from ldlm.pipelines.latent_diffusion import window_starts


def _seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


FIRST = "Zizzi is a cheap coffee shop serving Italian food in the riverside."  # one full block of 8, 4 more
LAST = "It has a high customer rating"


@pytest.mark.parametrize("method", ["condition", "replace"])
def test_infill_keeps_fixed_text_and_blocks_exactly(make_pipeline, method):
    pipe = make_pipeline()
    seen = []
    forward = pipe.transformer.forward
    pipe.transformer.forward = lambda x, t, s=None, context=None, *a: seen.append(context) or forward(x, t, s, context, *a)
    out = pipe.infill([FIRST, None, LAST], gap_blocks=2, method=method, num_samples_per_prompt=3,
                      num_inference_steps=4, generator=_seeded())
    ids = pipe.tokenizer(FIRST, add_special_tokens=False)["input_ids"]
    block = torch.tensor([ids[:8]])
    expected = pipe.vae.encode(block, torch.ones_like(block))[0]  # the one complete fixed block, in VAE units
    assert out.latents.shape == (3, 5 * 2, 8)
    for row in range(3):
        assert torch.allclose(out.latents[row, :2], expected, atol=1e-5)
        assert out.texts[row].startswith(FIRST) and LAST in out.texts[row]
        assert out.texts[row].index(LAST) > len(FIRST)
    flagged = torch.stack([c.any() for c in seen])
    assert bool(flagged.all()) if method == "condition" else not bool(flagged.any())


def test_infill_methods_differ_and_are_seeded(make_pipeline):
    pipe = make_pipeline()
    run = lambda method, seed=0: pipe.infill([FIRST, None, LAST], method=method, num_inference_steps=4,  # noqa: E731
                                             generator=_seeded(seed), output_type="latent").latents
    assert torch.equal(run("condition"), run("condition"))
    assert not torch.equal(run("condition")[:, 4:], run("replace")[:, 4:])


def test_a_gap_longer_than_the_window_is_filled_whole_and_both_ends_reach_it(make_pipeline):
    pipe = make_pipeline()  # a 6-block window: 2 + 10 + 1 blocks take four overlapping windows
    run = lambda last: pipe.infill([FIRST, None, last], gap_blocks=10, num_samples_per_prompt=2,  # noqa: E731
                                   num_inference_steps=6, generator=_seeded())
    out, other = run(LAST), run("The Eagle is a pub")
    assert out.latents.shape == (2, 13 * 2, 8)
    for text in out.texts:
        assert text.startswith(FIRST) and text.index(LAST) > len(FIRST)
    assert torch.equal(out.latents[:, :2], other.latents[:, :2])  # the fixed first block
    # block 5 shares no window with the last block (12; windows start at 0, 3, 6, 7), yet the last one reaches it
    # through the steps (bitwise: the two runs differ only in the last segment)
    assert not torch.equal(out.latents[:, 10:12], other.latents[:, 10:12])


@pytest.mark.parametrize("blocks,window,starts", [(6, 6, [0]), (7, 6, [0, 1]), (9, 6, [0, 3]), (13, 6, [0, 3, 6, 7]),
                                                  (5, 1, [0, 1, 2, 3, 4])])
def test_window_starts_cover_the_sequence_half_a_window_apart(blocks, window, starts):
    assert window_starts(blocks, window) == starts


def test_long_sequences_average_overlapping_windows_towards_their_centres(make_pipeline):
    pipe, k = make_pipeline(), 2
    x = torch.randn(2, 9 * k, 8, generator=_seeded())
    flagged = torch.zeros(2, 9 * k, dtype=torch.bool)
    flagged[:, :k] = True
    t = torch.full((2,), 500)
    output = lambda a, b: pipe._model_output(x[:, a:b], t, x[:, a:b] / 2, flagged[:, a:b], None, 1.0)  # noqa: E731
    whole, first, last = output(0, 9 * k), output(0, 6 * k), output(3 * k, 9 * k)
    torch.testing.assert_close(whole[:, : 3 * k], first[:, : 3 * k])
    torch.testing.assert_close(whole[:, 6 * k :], last[:, 3 * k :])
    w = torch.tensor([3.0, 2.0, 1.0]).repeat_interleave(k)[:, None]  # blocks 3-5: the end of one, the start of the other
    torch.testing.assert_close(whole[:, 3 * k : 6 * k], (w * first[:, 3 * k :] + w.flip(0) * last[:, : 3 * k]) / 4)


@pytest.mark.parametrize("segments,kwargs,match", [
    ([None, None], {}, "at least one string"),
    ("a pub", {}, "at least one string"),
    ([FIRST], {"method": "paint"}, "method"),
    ([FIRST, None], {"gap_blocks": 0}, "gap_blocks"),
    ([FIRST, None], {"num_inference_steps": 0}, "num_inference_steps"),
])
def test_infill_rejects_bad_arguments(make_pipeline, segments, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_pipeline().infill(segments, **kwargs)


def test_infill_command(make_pipeline, tmp_path, capsys):
    make_pipeline().save_pretrained(tmp_path / "pipe")
    assert main(["infill", FIRST, "_", LAST, "--model", str(tmp_path / "pipe"), "--num-samples", "2",
                 "--steps", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith(FIRST) and LAST in line for line in lines)
    assert main(["infill", "_", "--model", str(tmp_path / "pipe")]) == 2
    assert "at least one string" in capsys.readouterr().err


@pytest.mark.parametrize("objective,scheduler", [("vp", "ddpm"), ("vp", "euler"), ("vp", "unipc"),
                                                 ("flow", "flow-euler"), ("flow", "flow-heun")])
def test_replacement_works_with_every_kind_of_scheduler(make_pipeline, objective, scheduler):
    pipe = make_pipeline(objective, scheduler)
    out = pipe.infill([FIRST, None, LAST], method="replace", num_samples_per_prompt=2, num_inference_steps=4,
                      generator=_seeded())
    assert torch.isfinite(out.latents).all()
    assert all(text.startswith(FIRST) and LAST in text for text in out.texts)
