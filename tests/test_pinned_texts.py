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
        'Clowns is a moderately priced, customer rating and has English coffee shop with The Bakers.',
        'Fitzbillies is family-friendly serving English food and is near Crowne Plaza Hotel and a a restaurant.',
        'The Golden Palace is a pub, adult Express by Holiday Inn trick serving Chinese food. It is located '
        'rated and is kid located in the city.',
    ]


def test_autoguidance_off(pipe):
    assert pipe(batch_size=3, num_inference_steps=10, generator=_seeded(0), autoguidance=1).texts == [
        'Clowns is a moderate price range a restaurant that serves English coffee shop with The Bakers.',
        'Family rating, affordable is family-friendly serves English food and is The Wrest Plaza Hotel and a a '
        'rating.',
        'The Golden Palace is a sorts and coffee shop by Holiday rating average prices Chinese food. It is '
        'located range and is price friendly for less..',
    ]


def test_snapping(pipe):
    assert pipe(batch_size=2, num_inference_steps=10, generator=_seeded(0), snap=0.5).texts == [
        'Clowns is a moderately priced, customer rating and is English coffee shop with The Bakers.',
        'Fitzbillies is family-friendly serving English food and is near Crowne Plaza Hotel and a low rating.',
    ]


def test_prompts_with_classifier_free_guidance_and_held_tokens(pipe):
    texts = pipe([PROMPT, PROMPT, "Zizzi is a"], num_blocks=3, num_inference_steps=5, guidance_scale=2.0,
                 generator=_seeded(1)).texts
    assert texts == [
        'The Eagle is a coffee shop serving Italian food in the riverside area. It has a high customer.',
        'The Eagle is a coffee shop serving Italian food in the riverside area. It has a high customer rating, '
        'with a 3 out of 5 out of 5. they it again is a average price.',
        'Zizzi is a rated, pub but It is located near Café Sicilia with a rivers sites can be found.',
    ]


def test_infill_condition_and_replace(pipe):
    assert pipe.infill(SEGMENTS, num_inference_steps=5, generator=_seeded(2)).texts == [
        'The Mill is a pub near the river that serves cheap English food. Protocols center It is family friendly.',
    ]
    assert pipe.infill(SEGMENTS, method="replace", num_inference_steps=5, generator=_seeded(3)).texts == [
        'The Mill is a pub near the river that serves cheap English food. with  ratings. It serves Chinese '
        'food. The Indian food with a moderatelyrestpress. It is family friendly.',
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
            'The Eagle is a aside serving, price range, near venue for and city center.  called wide, is '
            'agreeing to sequencing coffee Basilica is is a.\n',
            'The Eagle is moderate endings persons and a aside 5. service.',
        ],
        [
            ' partial Holiday Inn is not family friendly.',
            '',
        ],
    ]


def test_gradient_guidance(pipe):
    guidance = GradientGuidance([KeywordControl("Italian")], steps=2)
    assert pipe(num_blocks=2, num_inference_steps=3, guidance=guidance, generator=_seeded(5)).texts == [
        ' clients, serves Italian, in food only your me of the a, near partial, Italian food. they have '
        'associated  in  price ranges, tradition-unsqueeze',
    ]


def test_vae_round_trip(pipe):
    text = "Loch Fyne serves English food in the riverside area near The Rice Boat."
    latents = pipe.vae.encode_text([text], pipe.tokenizer)[0]
    assert pipe.vae.decode_text(latents[None], pipe.tokenizer) == [
        'Lippiy area serves English food in the riverside area near The ship Bahamas.',
    ]
