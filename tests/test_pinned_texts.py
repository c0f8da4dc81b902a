"""The shipped checkpoint gives exactly these texts for these seeds: sampling, prompts with classifier-free guidance,
infilling, long generation, gradient guidance, snapping and the VAE round trip are pinned, so a refactor cannot
change them."""
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
        'Clowns is a expensive price range a restaurant that serves English coffee shop with The Bakers.',
        'ightly rating,ande has family-friendly serves English food and is The Acrest Plaza Hotel and is a '
        'rating.',
        'The Golden Palace is a expression from coffee shop with Holiday rating average prices Chinese food. '
        'It is located range and a price friendly for less..',
    ]


def test_snapping(pipe):
    assert pipe(batch_size=2, num_inference_steps=10, generator=_seeded(0), snap=0.5).texts == [
        'Clowns is a expensive price range a restaurant that serves English coffee shop with The Bakers.',
        'Instead Rating, low is family-friendly serves English food and is a Crowne Plaza Hotel and is a '
        'rating.',
    ]


def test_prompts_with_classifier_free_guidance_and_held_tokens(pipe):
    texts = pipe([PROMPT, PROMPT, "Zizzi is a"], num_blocks=3, num_inference_steps=5, guidance_scale=2.0,
                 generator=_seeded(1)).texts
    assert texts == [
        'The Eagle is a coffee shop serving Italian food in the riverside area. It has a high to riverside '
        'near Raja Indian Cuisine.',
        'The Eagle is a coffee shop serving Italian food in the riverside area. It has a high- city centre. It '
        '1 out of 5 out of 5. It not rating in the 5.',
        'Zizzi is a rated coffee shop is a coffee shop near Crowne Plaza and serves human rivers food more be '
        'found.',
    ]


def test_infill_condition_and_replace(pipe):
    assert pipe.infill(SEGMENTS, num_inference_steps=5, generator=_seeded(2)).texts == [
        'The Mill is a pub near the river that serves cheap English food. eds restaurant rating. It is family '
        'friendly.',
    ]
    assert pipe.infill(SEGMENTS, method="replace", num_inference_steps=5, generator=_seeded(3)).texts == [
        'The Mill is a pub near the river that serves cheap English food.  It range. It serves Chinese food. '
        'and two food, a coffee It is family friendly.',
    ]


def test_long_generation_groups(pipe):
    run = LongGeneration(pipe, "The Eagle is", max_tokens=40, num_documents=2, new_blocks=2, num_inference_steps=3,
                         generator=_seeded(4))
    assert list(run) == [
        ['', ''],
        [
            'The Eagle is a that serves English food star monarchy coffee Plaza with a City center and is The '
            'near.',
            'The Eagle isbie French Chef  riversThere is a rivers rate at the riversde',
        ],
    ]


def test_gradient_guidance(pipe):
    guidance = GradientGuidance([KeywordControl("Italian")], steps=2)
    assert pipe(num_blocks=2, num_inference_steps=3, guidance=guidance, generator=_seeded(5)).texts == [
        'idences that gets Italian. a food before solution, there the and, near forth of stones.  unless to '
        'for is providing Italian food and the suspension. and',
    ]


def test_vae_round_trip(pipe):
    text = "Loch Fyne serves English food in the riverside area near The Rice Boat."
    latents = pipe.vae.encode_text([text], pipe.tokenizer)[0]
    assert pipe.vae.decode_text(latents[None], pipe.tokenizer) == [
        'Mromiy shop serves English food in the riverside area near Theurn Plaza.',
    ]
