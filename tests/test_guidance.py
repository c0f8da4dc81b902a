import pytest
import torch
import torch.nn.functional as F

from ldlm.cli import main
from ldlm.data.postags import LexiconTagger
from ldlm.pipelines.guidance import (ClassifierControl, GradientGuidance, KeywordControl, LengthControl,
                                     TaggingControl, TokenScores)
from ldlm.pipelines.latent_classifier import LatentClassifier
from ldlm.pipelines.text import split_words


def _final_score(pipe, guidance, score_with: GradientGuidance, seed: int = 0) -> float:
    """Mean target score of the final latents of 8 samples (standardized), with or without ``guidance``."""
    latents = pipe(batch_size=8, num_blocks=3, num_inference_steps=6, generator=torch.Generator().manual_seed(seed),
                   guidance=guidance, output_type="latent").latents
    with torch.no_grad():
        x0 = pipe.vae.standardize(latents)
        return float(score_with.total_score(pipe, x0).mean())


def _classifier(pipe, task: str, labels: list[str]) -> LatentClassifier:
    torch.manual_seed(0)
    return LatentClassifier(latent_channels=8, latents_per_block=2, block_length=8, max_blocks=6, task=task,
                            labels=labels, hidden_size=16, num_layers=1, num_heads=2).eval().requires_grad_(False)


def test_token_scores_match_the_full_softmax_when_every_token_is_a_candidate(make_pipeline):
    pipe = make_pipeline()
    x0 = torch.randn(2, 4, 8)
    vocab = pipe.vae.config.vocab_size
    scores = TokenScores(pipe, x0, [5, 7], top_k=vocab)  # every token a candidate: required ids are duplicates
    full = F.log_softmax(pipe.vae.decode(pipe.vae.unstandardize(x0).reshape(-1, 2, 8)), -1).reshape(2, -1, vocab)
    got = scores(x0)
    assert torch.allclose(got[5], full[..., 5], atol=1e-4) and torch.allclose(got[7], full[..., 7], atol=1e-4)


@pytest.mark.parametrize("control", [KeywordControl("Italian"), LengthControl(11)])
def test_guidance_raises_the_decoder_target_score(make_pipeline, control):
    pipe = make_pipeline()
    guidance = GradientGuidance([control], steps=3, lr=0.3, proximity=0.01, top_k=16)
    plain, guided = _final_score(pipe, None, guidance), _final_score(pipe, guidance, guidance)
    assert guided > plain + 0.5


def test_guidance_raises_classifier_and_tagger_scores_and_two_controls_at_once(make_pipeline):
    pipe = make_pipeline()
    content = ClassifierControl(_classifier(pipe, "multilabel", ["food[Italian]", "area[riverside]"]),
                                "food[Italian]")
    tags = TaggingControl(_classifier(pipe, "tagging", ["NOUN", "VERB", "DET"]), ["DET", "NOUN", None, "VERB"])
    both = GradientGuidance([content, KeywordControl("riverside")], lr=0.3, proximity=0.01)
    for guidance in (GradientGuidance([content], lr=0.3), GradientGuidance([tags], lr=0.3), both):
        assert _final_score(pipe, guidance, guidance) > _final_score(pipe, None, guidance) + 0.1
    for control in both.controls:  # each of the two combined targets rises on its own
        alone = GradientGuidance([control])
        assert _final_score(pipe, both, alone) > _final_score(pipe, None, alone)


def test_success_checks_read_the_text(make_pipeline):
    pipe = make_pipeline()
    tok = pipe.tokenizer
    assert KeywordControl("italian").success("Zizzi serves Italian food.", tok)
    assert not KeywordControl("Ital").success("Zizzi serves Italian food.", tok)
    assert LengthControl(3).success("Zizzi serves food", tok) and not LengthControl(4).success("Zizzi serves", tok)
    content = ClassifierControl(_classifier(pipe, "multilabel", ["food[Italian]"]), "food[Italian]")
    assert content.phrase == "Italian" and content.success("an italian place", tok)


def test_tag_accuracy_splits_words_as_the_targets_do(make_pipeline):
    """Punctuation is its own word for the judge too, so "pub." does not shift the tags that follow."""
    pipe = make_pipeline()
    judge = LexiconTagger({"a": "DET", "pub": "NOUN", "it": "PRON", "is": "VERB"})
    text = "A pub. It is"
    control = TaggingControl(_classifier(pipe, "tagging", ["NOUN"]), [], judge.tag(split_words(text)), judge=judge)
    assert control.accuracy(text) == 1.0


def test_guidance_rejects_bad_targets(make_pipeline):
    pipe = make_pipeline()
    with pytest.raises(ValueError, match="length"):
        LengthControl(0)
    with pytest.raises(ValueError, match="keyword"):
        KeywordControl(" ")
    with pytest.raises(ValueError, match="label"):
        ClassifierControl(_classifier(pipe, "multilabel", ["food[Italian]"]), "food[Thai]")
    with pytest.raises(ValueError, match="tags"):
        TaggingControl(_classifier(pipe, "tagging", ["NOUN"]), ["VERB"])
    with pytest.raises(ValueError, match="Control"):
        GradientGuidance([])
    with pytest.raises(ValueError, match="fit"):
        pipe(num_blocks=2, guidance=GradientGuidance([LengthControl(40)]))
    with pytest.raises(ValueError, match="guidance must be callable"):
        pipe(guidance="length")


def test_generate_command_guides_by_length_and_keyword(make_pipeline, tmp_path, capsys):
    make_pipeline().save_pretrained(tmp_path / "pipe")
    assert main(["generate", "--model", str(tmp_path / "pipe"), "--steps", "3", "--num-samples", "2",
                 "--length", "6", "--keyword", "Italian"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2
    assert main(["generate", "--model", str(tmp_path / "pipe"), "--content", "food[Italian]"]) == 2
    assert "--classifier" in capsys.readouterr().err


def test_guidance_sees_the_known_latents_and_leaves_model_weights_alone(make_pipeline):
    pipe = make_pipeline()
    seen = []
    inner = GradientGuidance([KeywordControl("riverside")], steps=2)

    def spy(pipe_, x0, t):
        seen.append(x0.clone())
        return inner(pipe_, x0, t)

    prompt = "Zizzi is a cheap coffee shop serving Italian food in the riverside."  # one full block of 8
    out = pipe(prompt, num_blocks=3, num_inference_steps=3, guidance=spy, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([pipe.tokenizer(prompt, add_special_tokens=False)["input_ids"][:8]])
    known = pipe.vae.standardize(pipe.vae.encode(ids, torch.ones_like(ids))).reshape(-1, 8)
    assert len(seen) == 3 and all(torch.allclose(x0[0, :2], known, atol=1e-5) for x0 in seen)
    assert out.texts[0].startswith(prompt)
    assert all(p.grad is None for p in [*pipe.vae.parameters(), *pipe.transformer.parameters()])


def test_half_precision_models_infill_and_guide(make_pipeline):
    pipe = make_pipeline().to(torch.float16)
    guidance = GradientGuidance([LengthControl(9)], steps=1)
    out = pipe.infill(["Zizzi is a cheap coffee shop serving Italian food in the riverside.", None],
                      num_inference_steps=2, guidance=guidance, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.latents).all() and out.latents.dtype == torch.float32
