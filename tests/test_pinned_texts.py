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
        'Cocum is a expensive price range a restaurant that serves English coffee shop with Centre near the '
        'City Portland attire.',
        'ad BBC menande low cheap-friendly serves English food with is The Wrestung. It is a rating.',
        'The moon. has is wild by coffee shop with licence rating price prices are doors. It is located '
        'friendly and a price range for less\xa0.',
    ]


def test_snapping(pipe):
    assert pipe(batch_size=2, num_inference_steps=10, generator=_seeded(0), snap=0.5).texts == [
        'Clowns is a expensive price range a restaurant that serves English coffee shop with centre near the '
        'city Portland attire.',
        'Theṃ House controlled low cheap-friendly serves English food with is The Wresties. It is a Bedford.',
    ]


def test_prompts_with_classifier_free_guidance_and_held_tokens(pipe):
    texts = pipe([PROMPT, PROMPT, "Zizzi is a"], num_blocks=3, num_inference_steps=5, guidance_scale=2.0,
                 generator=_seeded(1)).texts
    assert texts == [
        'The Eagle is a coffee shop serving Italian food in the riverside area. It has a high the city centre '
        'area. city centre, has5 price range.',
        'The Eagle is a coffee shop serving Italian food in the riverside area. It has a high- English food of '
        'a the city out of city centre. It  river, with not skills but to  centre, and it is not not',
        'Zizzi is a a coffee shop is a coffee shop near Café Sic_ serves  food, more than two.',
    ]


def test_infill_condition_and_replace(pipe):
    assert pipe.infill(SEGMENTS, num_inference_steps=5, generator=_seeded(2)).texts == [
        'The Mill is a pub near the river that serves cheap English food. eds restaurant Bedford.0 a. It is '
        'family friendly.',
    ]
    assert pipe.infill(SEGMENTS, method="replace", num_inference_steps=5, generator=_seeded(3)).texts == [
        'The Mill is a pub near the river that serves cheap English food.. It range. It has Cambridge.ab and '
        'one food in the gear It is family friendly.',
    ]


def test_long_generation_groups(pipe):
    run = LongGeneration(pipe, "The Eagle is", max_tokens=40, num_documents=2, new_blocks=2, num_inference_steps=3,
                         generator=_seeded(4))
    assert list(run) == [
        ["", ""],
        [
            'The Eagle is a an piece coffee restaurant English environment coffee Prize near The moon located and '
            'isnd nearby.',
            'The Eagle is eat near Urban books city area a A rivers price',
        ],
    ]


def test_gradient_guidance(pipe):
    guidance = GradientGuidance([KeywordControl("Italian")], steps=2)
    assert pipe(num_blocks=2, num_inference_steps=3, guidance=guidance, generator=_seeded(5)).texts == [
        'unched but Italian food. a price more environment, of the and is near partial Italian food.\n it to '
        'for is by on food which, fame. This',
    ]


def test_vae_round_trip(pipe):
    text = "Loch Fyne serves English food in the riverside area near The Rice Boat."
    latents = pipe.vae.encode_text([text], pipe.tokenizer)[0]
    assert pipe.vae.decode_text(latents[None], pipe.tokenizer) == [
        'Mromiy shop serves English food in the riverside area near Theurn Plaza.',
    ]
