import pytest
import torch

from ldlm.cli import main


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


@pytest.mark.parametrize("segments,kwargs,match", [
    ([None, None], {}, "at least one string"),
    ("a pub", {}, "at least one string"),
    ([FIRST, None, FIRST, None, FIRST], {}, "holds 6"),
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
