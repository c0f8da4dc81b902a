"""The shipped checkpoint gives exactly these texts for these seeds: sampling (with its default autoguidance and
temperature, and without autoguidance), prompts with classifier-free guidance, infilling, long generation, gradient
guidance, snapping and the VAE round trip are pinned, so a refactor cannot change them."""
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
        'Clowns is a high price at a pub that offers English food. It is located near Raja Portland Arms.',
        'Fitzbillies is child-friendly serving English food and called The Cambridge Blue Plaza Hotel and is '
        'average rating.',
        'The Golden Palace located in the city near Express by Holiday Inn, serving Chinese food. It is located '
        'near the city  located in the city centre',
    ]


def test_autoguidance_off(pipe):
    assert pipe(batch_size=3, num_inference_steps=10, generator=_seeded(0), autoguidance=1).texts == [
        'Clowns is a low price range a restaurant that serves English coffee shop with is by the city centre',
        'Fitzbillies is family-friendly serving English food and is The Wrest Plaza Hotel and has low rating.',
        'The Golden Palace has a great friendly coffee shop with pricing ratings average serving Chinese food. They '
        'high customer rating and is kid friendly in this city.',
    ]


def test_snapping(pipe):
    assert pipe(batch_size=2, num_inference_steps=10, generator=_seeded(0), snap=0.5).texts == [
        'Clowns is a high price at a pub that offers English food. It is located near Raja Portland Arms.',
        'Fitzbillies is child-friendly serving English food and called The Wrest Plaza Hotel and is average rating.',
    ]


def test_prompts_with_classifier_free_guidance_and_held_tokens(pipe):
    texts = pipe([PROMPT, PROMPT, "Zizzi is a"], num_blocks=3, num_inference_steps=5, guidance_scale=2.0,
                 generator=_seeded(1)).texts
    assert texts == [
        'The Eagle is a coffee shop serving Italian food in the riverside area. It has a high by vendor error, '
        'Itastrous complemented and is a adult one.rest',
        'The Eagle is a coffee shop serving Italian food in the riverside area. It has a high rating  They are a 1 '
        'out of 5. It 5 him could very to go a care other profqueeze family friendly no her',
        'Zizzi is a customer rating, a high customer rating. (0 sitsonto offers  food House price of%||',
    ]


def test_infill_condition_and_replace(pipe):
    assert pipe.infill(SEGMENTS, num_inference_steps=5, generator=_seeded(2)).texts == [
        'The Mill is a pub near the river that serves cheap English food. prices, £20-.year coffee The-abling,. '
        'which is family friendly It is family friendly.',
    ]
    assert pipe.infill(SEGMENTS, method="replace", num_inference_steps=5, generator=_seeded(3)).texts == [
        'The Mill is a pub near the river that serves cheap English food. food  low. It serves Blue Spice and the '
        'food,  Inf-lift. It is family friendly.',
    ]


def test_long_generation_groups(pipe):
    run = LongGeneration(pipe, "The Eagle is", max_tokens=40, num_documents=2, new_blocks=2, num_inference_steps=3,
                         generator=_seeded(4))
    assert list(run) == [
        [
            '',
            '',
        ],
        [
            'The Eagle is restaurant that serves Chinese food. Its moderate prices with a price range and  and to '
            'exist in the city Hospital foodtypical to in the river The',
            'The Eagle is Raja Indian Cuisine.  is a coffee shop serving  with average',
        ],
        [
            ' Raja Indian Cuisine is are family near the',
            '',
        ],
    ]


def test_gradient_guidance(pipe):
    guidance = GradientGuidance([KeywordControl("Italian")], steps=2)
    assert pipe(num_blocks=2, num_inference_steps=3, guidance=guidance, generator=_seeded(5)).texts == [
        ' office you". asking for a they were your at that the a. near abiotic The Riverside.  They become a shop, '
        'on price Italian, good in one',
    ]


def test_vae_round_trip(pipe):
    text = "Loch Fyne serves English food in the riverside area near The Rice Boat."
    latents = pipe.vae.encode_text([text], pipe.tokenizer)[0]
    assert pipe.vae.decode_text(latents[None], pipe.tokenizer) == [
        'Murianiy area serves English food in the riverside area near The Ship Bahamas.',
    ]
