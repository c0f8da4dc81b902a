"""The shipped checkpoint gives exactly these texts for these seeds: sampling, prompts with classifier-free guidance,
infilling, long generation, gradient guidance and the VAE round trip are pinned, so a refactor cannot change them."""
import pytest
import torch

from ldlm.pipelines.guidance import GradientGuidance, KeywordControl
from ldlm.pipelines.loading import SHIPPED, load_pipeline
from ldlm.pipelines.long_generation import LongGeneration

pytestmark = pytest.mark.skipif(not (SHIPPED / "model_index.json").is_file(), reason="no source checkout")

PROMPT = "The Eagle is a coffee shop serving Italian food in the riverside area. It has a high"  # 1 block + 3 tokens
SEGMENTS = ["The Mill is a pub near the river that serves cheap English food.", None, "It is family friendly."]


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline()


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_unconditional_batch(pipe):
    assert pipe(batch_size=3, num_inference_steps=10, generator=_seeded(0)).texts == [
        "Cocum is a expensive price range is rating of do arms.",
        "Fitzbillies is family English coffee serves English food with is a Chinese shop) centre and a high rating.",
        "The Eagle. located at great English coffee shop provide price shop Chinese prices is bed. It is located "
        "rating and a standard located average well\xa0 center",
    ]


def test_prompts_with_classifier_free_guidance_and_held_tokens(pipe):
    texts = pipe([PROMPT, PROMPT, "Zizzi is a"], num_blocks=3, num_inference_steps=5, guidance_scale=2.0,
                 generator=_seeded(1)).texts
    assert texts == [
        PROMPT + " for a coffee shop at children food, located of 5.rest",
        PROMPT + " coffee city centre, is the city center of\xa0 . It  house fact not the skills because to 5.",
        "Zizzi is a kid coffee shop a a coffee shop near Café Brazila sells  rivers food near-,.",
    ]


def test_infill_condition_and_replace(pipe):
    assert pipe.infill(SEGMENTS, num_inference_steps=5, generator=_seeded(2)).texts == [
        "The Mill is a pub near the river that serves cheap English food. Australians. rating. practition for. It is "
        "family friendly."]
    assert pipe.infill(SEGMENTS, method="replace", num_inference_steps=5, generator=_seeded(3)).texts == [
        "The Mill is a pub near the river that serves cheap English food., is shop. It has food. It is family "
        "friendly."]


def test_long_generation_groups(pipe):
    run = LongGeneration(pipe, "The Eagle is", max_tokens=40, num_documents=2, new_blocks=2, num_inference_steps=3,
                         generator=_seeded(4))
    assert list(run) == [
        ["", ""],
        ["The Eagle is-roring coffee food food coffee environment Cal price water, about serves rating  backyard "
         "proximity.",
         "The Eagle is coffee friendly rating not solution food in non cityahren solution with plus"],
    ]


def test_gradient_guidance(pipe):
    guidance = GradientGuidance([KeywordControl("Italian")], steps=2)
    assert pipe(num_blocks=2, num_inference_steps=3, guidance=guidance, generator=_seeded(5)).texts == [
        "types about Chinese English or non5 also solution in the is- food near English of Chinese., not coffee shop "
        "is with\xa0 food around.ises. For"]


def test_vae_round_trip(pipe):
    text = "Loch Fyne serves English food in the riverside area near The Rice Boat."
    latents = pipe.vae.encode_text([text], pipe.tokenizer)[0]
    assert pipe.vae.decode_text(latents[None], pipe.tokenizer) == [
        "Mau Byne serves English food in the riverside area near Theirectional herbal."]
