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
        'Cocum is a low priced, low rating and offers breath.',
        'Fitzbillies is family-friendly serving English food and called The Mill shop',
        'The coffee shop access in the Determ area Express by Holiday Inn house serving Chinese food. It is '
        'located more and a kid located in the city.',
    ]


def test_autoguidance_off(pipe):
    assert pipe(batch_size=3, num_inference_steps=10, generator=_seeded(0), autoguidance=1).texts == [
        'Cocns is a moderate price range a restaurant that serves English coffee shop with The Bakers.',
        'Family rating, affordable is family-friendly serves English food and is The Wrest Plaza Hotel and a a '
        'rating.',
        'The Golden Palace is a great court coffee shop with weekend rating star serving Chinese food. It is '
        'located rating and is kid friendly in our city.',
    ]


def test_snapping(pipe):
    assert pipe(batch_size=2, num_inference_steps=10, generator=_seeded(0), snap=0.5).texts == [
        'Cocum is a high price of low rating and offers food.',
        'Fitzbillies is family-friendly serving English food and called The Wresteters',
    ]


def test_prompts_with_classifier_free_guidance_and_held_tokens(pipe):
    texts = pipe([PROMPT, PROMPT, "Zizzi is a"], num_blocks=3, num_inference_steps=5, guidance_scale=2.0,
                 generator=_seeded(1)).texts
    assert texts == [
        'The Eagle is a coffee shop serving Italian food in the riverside area. It has a high customer rating of '
        "less't.",
        'The Eagle is a coffee shop serving Italian food in the riverside area. It has a high rating. They are '
        'not is the rating of 5 out of-5.',
        'Zizzi is a rated, coffeeilia offering English located near Café Sicra serves a Mountains House can be '
        'found.',
    ]


def test_infill_condition_and_replace(pipe):
    assert pipe.infill(SEGMENTS, num_inference_steps=5, generator=_seeded(2)).texts == [
        'The Mill is a pub near the river that serves cheap English food. centre. £20 and. It is family friendly.',
    ]
    assert pipe.infill(SEGMENTS, method="replace", num_inference_steps=5, generator=_seeded(3)).texts == [
        'The Mill is a pub near the river that serves cheap English food. with a ratings. It serves Blue Spice '
        'and good food and  moderately- bothered. It is family friendly.',
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
            'The Eagle is a great visit and price range for with £ range and Indian food This  and wide, as per '
            'tougging seat shop has access mild. and',
            'The Eagle is kid supply persons,  pub with a average serving restaurant with city crew.',
        ],
        [
            '',
            '',
        ],
    ]


def test_gradient_guidance(pipe):
    guidance = GradientGuidance([KeywordControl("Italian")], steps=2)
    assert pipe(num_blocks=2, num_inference_steps=3, guidance=guidance, generator=_seeded(5)).texts == [
        'atican thatarc Italian and a food take feet in of the- son the partial of Italian food. It have a a in '
        'an price range, it is service',
    ]


def test_vae_round_trip(pipe):
    text = "Loch Fyne serves English food in the riverside area near The Rice Boat."
    latents = pipe.vae.encode_text([text], pipe.tokenizer)[0]
    assert pipe.vae.decode_text(latents[None], pipe.tokenizer) == [
        'Lippiy area serves English food in the riverside area near The ship Bahamas.',
    ]
