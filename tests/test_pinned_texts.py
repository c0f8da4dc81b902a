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
        'Cocum is a low price, low priced and offers welcome.',
        'Fitzbillies is child-friendly priced English coffee shop called The Mill combination',
        'The coffee shop Shop in an English coffee shop with customer ratings, serving Chinese food. Should low '
        'customer ratings and is an located in city centre.',
    ]


def test_autoguidance_off(pipe):
    assert pipe(batch_size=3, num_inference_steps=10, generator=_seeded(0), autoguidance=1).texts == [
        'Clowns is a moderate price range a restaurant that serves English coffee shop with The Bakers.',
        'Fitzbill Palace is family-friendly serving English food and is The Wrestanasia',
        'The Golden Palace has a great English coffee shop with weekend rating star serving Chinese food. It high '
        'customer rating and is kid located in our centre.',
    ]


def test_snapping(pipe):
    assert pipe(batch_size=2, num_inference_steps=10, generator=_seeded(0), snap=0.5).texts == [
        'Cocum is a high price, high priced and offers welcome.',
        'Fitzbillies is child-friendly priced English coffee shop called The Mill.',
    ]


def test_prompts_with_classifier_free_guidance_and_held_tokens(pipe):
    texts = pipe([PROMPT, PROMPT, "Zizzi is a"], num_blocks=3, num_inference_steps=5, guidance_scale=2.0,
                 generator=_seeded(1)).texts
    assert texts == [
        'The Eagle is a coffee shop serving Italian food in the riverside area. It has a high customer, of cheap '
        'Italy',
        'The Eagle is a coffee shop serving Italian food in the riverside area. It has a high starsies restaurant is '
        'a 3 out of 5  not.  Theyrath only a two. in city. with cloud with just paid',
        'Zizzi is a higher, . located on in recite lit"]), enjoyakers child never room, can be legal.',
    ]


def test_infill_condition_and_replace(pipe):
    assert pipe.infill(SEGMENTS, num_inference_steps=5, generator=_seeded(2)).texts == [
        'The Mill is a pub near the river that serves cheap English food. restaurant, £20- treeia coffee shop.ICS '
        'area. and is family friendly It is family friendly.',
    ]
    assert pipe.infill(SEGMENTS, method="replace", num_inference_steps=5, generator=_seeded(3)).texts == [
        'The Mill is a pub near the river that serves cheap English food.   low. It serves Blue Spice and the food,  '
        'Inf- bothered. It is family friendly.',
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
            'The Eagle is a both visit and price range rating with customer range of average. natural  and provides '
            'wine of wild and',
            'The Eagle is adult author Man, the rated is coffee. serving restaurant with apite',
        ],
    ]


def test_gradient_guidance(pipe):
    guidance = GradientGuidance([KeywordControl("Italian")], steps=2)
    assert pipe(num_blocks=2, num_inference_steps=3, guidance=guidance, generator=_seeded(5)).texts == [
        'pub an Italian Italian and in food takeaughters is there the and matter too The, Italian food. only comes '
        'suitable[ by differences price range is £20',
    ]


def test_vae_round_trip(pipe):
    text = "Loch Fyne serves English food in the riverside area near The Rice Boat."
    latents = pipe.vae.encode_text([text], pipe.tokenizer)[0]
    assert pipe.vae.decode_text(latents[None], pipe.tokenizer) == [
        'Lippiy area serves English food in the riverside area near The ship Bahamas.',
    ]
