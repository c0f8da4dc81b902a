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
        'Fitzbillies is child-friendly serving English food and called The Cambridgene Plaza Hotel and is average '
        'rating.',
        'The Golden Palace located in the river near Express by Holiday Inn, serving Chinese food. It is located '
        'near the city  located in the city centre',
    ]


def test_autoguidance_off(pipe):
    assert pipe(batch_size=3, num_inference_steps=10, generator=_seeded(0), autoguidance=1).texts == [
        'Clowns is a moderate price range a restaurant that offers English coffee shop with is by the city centre',
        'Fitzbillies is family-friendly serving English food and is The Wrest Plaza Hotel and has low rating.',
        'The Golden Palace has a value, coffee shop with pricing ratings average serving Chinese food. They high '
        'customer rating and is kid friendly in this city.',
    ]


def test_snapping(pipe):
    assert pipe(batch_size=2, num_inference_steps=10, generator=_seeded(0), snap=0.5).texts == [
        'Clowns is a high price at a pub that offers English food. It is located near Raja Portland Arms.',
        'Fitzbillies is child-friendly serving English food and named The Wrest Plaza Hotel and has low rating.',
    ]


def test_prompts_with_classifier_free_guidance_and_held_tokens(pipe):
    texts = pipe([PROMPT, PROMPT, "Zizzi is a"], num_blocks=3, num_inference_steps=5, guidance_scale=2.0,
                 generator=_seeded(1)).texts
    assert texts == [
        'The Eagle is a coffee shop serving Italian food in the riverside area. It has a high customer rating and '
        'are good the average and for English food notaff',
        'The Eagle is a coffee shop serving Italian food in the riverside area. It has a high customer rating, is a '
        '1 out of 5. It 5 you would very to go to two very prof',
        'Zizzi is a customer rating of the high coffee shop in riverside, practition nargs in Cambridge. close All '
        'Bar',
    ]


def test_infill_condition_and_replace(pipe):
    assert pipe.infill(SEGMENTS, num_inference_steps=5, generator=_seeded(2)).texts == [
        'The Mill is a pub near the river that serves cheap English food. £, £20-.month coffee The-abling,, which is '
        'family friendly It is family friendly.',
    ]
    assert pipe.infill(SEGMENTS, method="replace", num_inference_steps=5, generator=_seeded(3)).texts == [
        'The Mill is a pub near the river that serves cheap English food. food  low. It serves Blue Spings and the '
        'food,  Inf-trust. It is family friendly.',
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
            'The Eagle is shop that mid or average food and customer rating with a price range The  and to exist in '
            'the  plt coffee versus to have the. The',
            'The Eagle is inexpensive environment, it  shop is a coffee shop above as restaurant',
        ],
        [
            ' Raja Indian Cuisine is is family friendly.',
            '',
        ],
    ]


def test_gradient_guidance(pipe):
    guidance = GradientGuidance([KeywordControl("Italian")], steps=2)
    assert pipe(num_blocks=2, num_inference_steps=3, guidance=guidance, generator=_seeded(5)).texts == [
        'founded for... Indian Hotel in Italian were feet at then the a river near Caf ofgha,  not serve for a  that '
        'serves Italian, schools is given',
    ]


def test_vae_round_trip(pipe):
    text = "Loch Fyne serves English food in the riverside area near The Rice Boat."
    latents = pipe.vae.encode_text([text], pipe.tokenizer)[0]
    assert pipe.vae.decode_text(latents[None], pipe.tokenizer) == [
        'Murian Fy area serves English food in the riverside area near The Rice rivers.',
    ]
