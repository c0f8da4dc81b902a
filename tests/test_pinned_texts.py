"""The shipped checkpoint gives exactly these texts for these seeds: sampling (with its default autoguidance, and
without), prompts with classifier-free guidance, infilling, long generation, gradient guidance, snapping and the VAE
round trip are pinned, so a refactor cannot change them."""
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
        'Clowns is a moderately priced, customer rating and is English coffee shop with The Bakers.',
        'Fitzbillies is family-friendly serving English food and is near Crowne Plaza Hotel and is a '
        'restaurant.',
        'The Golden Palace is a Express, adult Express by Holiday Inn city serving Chinese food. It is '
        'located preferred and an kid located in the centre.',
    ]


def test_autoguidance_off(pipe):
    assert pipe(batch_size=3, num_inference_steps=10, generator=_seeded(0), autoguidance=1).texts == [
        'Clowns is a expensive price range a restaurant that serves English coffee shop with The Bakers.',
        'ightly rating,ande has family-friendly serves English food and is The Acrest Plaza Hotel and is a '
        'rating.',
        'The Golden Palace is a expression from coffee shop with Holiday rating average prices Chinese food. '
        'It is located range and a price friendly for less..',
    ]


def test_snapping(pipe):
    assert pipe(batch_size=2, num_inference_steps=10, generator=_seeded(0), snap=0.5).texts == [
        'Clowns is a moderate priced, customer rating and is English coffee shop with The Bakers.',
        'Fitzbillies is family-friendly serving English food and is near Crowne Plaza Hotel and has low '
        'rating.',
    ]


def test_prompts_with_classifier_free_guidance_and_held_tokens(pipe):
    texts = pipe([PROMPT, PROMPT, "Zizzi is a"], num_blocks=3, num_inference_steps=5, guidance_scale=2.0,
                 generator=_seeded(1)).texts
    assert texts == [
        'The Eagle is a coffee shop serving Italian food in the riverside area. It has a high low to '
        'Welcome. that',
        'The Eagle is a coffee shop serving Italian food in the riverside area. It has a high- differences '
        'Rough. The 3 out of 5 out of 5 on they not it is a average price.',
        'Zizzi is a moderately rated coffee. The coffee shop near Café Sic restaurant X foreignger food can '
        'be found.',
    ]


def test_infill_condition_and_replace(pipe):
    assert pipe.infill(SEGMENTS, num_inference_steps=5, generator=_seeded(2)).texts == [
        'The Mill is a pub near the river that serves cheap English food. restaurant. It is family friendly.',
    ]
    assert pipe.infill(SEGMENTS, method="replace", num_inference_steps=5, generator=_seeded(3)).texts == [
        'The Mill is a pub near the river that serves cheap English food.   The. It serves Chinese food. The '
        'Indian food and a moderatelyrestfelt. It is family friendly.',
    ]


def test_long_generation_groups(pipe):
    run = LongGeneration(pipe, "The Eagle is", max_tokens=40, num_documents=2, new_blocks=2, num_inference_steps=3,
                         generator=_seeded(4))
    assert list(run) == [
        ['', ''],
        [
            'The Eagle is a customer located in  centre with coffee shop located in city centre and is and '
            'through, is unite and Express coffee shop with is a. The',
            'The Eagle is Raja life, the city pub in a rivers close, in Holiday centre. The rating',
        ],
        ['', ''],
    ]


def test_gradient_guidance(pipe):
    guidance = GradientGuidance([KeywordControl("Italian")], steps=2)
    assert pipe(num_blocks=2, num_inference_steps=3, guidance=guidance, generator=_seeded(5)).texts == [
        ' Express that serves Italian. is by there love in of the a books which more of Italian restaurant. '
        "could's area at a an food range of $20",
    ]


def test_vae_round_trip(pipe):
    text = "Loch Fyne serves English food in the riverside area near The Rice Boat."
    latents = pipe.vae.encode_text([text], pipe.tokenizer)[0]
    assert pipe.vae.decode_text(latents[None], pipe.tokenizer) == [
        'Mromiy shop serves English food in the riverside area near Theurn Plaza.',
    ]
