import pytest
import torch

from ldlm.vae.blocks import join_blocks, split_into_blocks
from ldlm.vae.model import TextVAE


def _vae(**kw) -> TextVAE:
    torch.manual_seed(0)
    args = dict(vocab_size=60, block_length=8, latents_per_block=2, latent_channels=6, d_model=32, d_embed=16,
                heads=2, encoder_layers=1, decoder_layers=1, eos_token_id=1, pad_token_id=0)
    return TextVAE(**(args | kw)).eval()


def test_shapes_and_sampling():
    vae = _vae()
    ids = torch.randint(4, 60, (3, 8))
    mask = torch.ones_like(ids)
    mean, logvar = vae.encode_distribution(ids, mask)
    assert mean.shape == logvar.shape == (3, 2, 6)
    assert torch.equal(vae.encode(ids, mask), mean)
    g = torch.Generator().manual_seed(1)
    sample = vae.encode(ids, mask, sample=True, generator=g)
    assert sample.shape == (3, 2, 6) and not torch.equal(sample, mean)
    assert vae.decode(mean).shape == (3, 8, 60)
    assert vae.decode_ids(mean).shape == (3, 8)
    torch.testing.assert_close(vae.unstandardize(vae.standardize(mean)), mean)


def test_encoder_ignores_padding_content():
    vae = _vae()
    ids = torch.randint(4, 60, (1, 8))
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0]])
    other = ids.clone()
    other[0, 5:] = 7
    torch.testing.assert_close(vae.encode(ids, mask), vae.encode(other, mask))


def test_logits_select_nearest_table_row():
    vae = _vae()
    table = vae.token_table
    assert torch.equal(vae.logits(table).argmax(-1), torch.arange(60))
    candidates = torch.tensor([5, 9, 11])
    assert torch.equal(vae.logits(table[candidates], candidates).argmax(-1), torch.arange(3))


def test_blocks_round_trip():
    blocks, mask = split_into_blocks(list(range(10, 21)), 4, eos_id=1, pad_id=0)
    assert blocks.shape == (3, 4) and mask.sum() == 12
    assert blocks[-1].tolist() == [18, 19, 20, 1]
    assert join_blocks(blocks, eos_id=1) == list(range(10, 21))
    blocks, mask = split_into_blocks([5, 6], 4, eos_id=1, pad_id=0)
    assert blocks.tolist() == [[5, 6, 1, 0]] and mask.tolist() == [[1, 1, 1, 0]]


def test_export_reload_identical(tmp_path):
    vae = _vae()
    with torch.no_grad():
        vae.latent_mean.fill_(0.5)
    vae.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    again = TextVAE.from_pretrained(tmp_path).eval()
    ids = torch.randint(4, 60, (2, 8))
    z = vae.encode(ids)
    torch.testing.assert_close(again.encode(ids), z, rtol=0, atol=0)
    torch.testing.assert_close(again.decode(z), vae.decode(z), rtol=0, atol=0)
    assert torch.equal(again.latent_mean, vae.latent_mean)


def test_snap_sequence_re_encodes_the_decoded_tokens_masked_after_eos():
    vae = _vae()
    latents = torch.randn(2, 6, 6, generator=torch.Generator().manual_seed(0))  # 2 sequences of 3 blocks
    ids = torch.randint(4, 60, (6, 8), generator=torch.Generator().manual_seed(1))  # no EOS (1) but these:
    ids[0, 3] = 1  # an EOS inside the first block: what follows it is padding to the encoder
    ids[0, 5:] = torch.tensor([9, 1, 1])
    ids[4, 7] = 1  # an EOS at a block's end masks nothing
    calls = []
    encode = vae.encode_sequence

    def spy(input_ids, attention_mask=None):
        calls.append((input_ids.clone(), attention_mask.clone()))
        return encode(input_ids, attention_mask)

    vae.decode_sequence = lambda z: ids.reshape(2, -1)
    vae.encode_sequence = spy
    snapped = vae.snap_sequence(latents)
    assert snapped.shape == latents.shape
    sent_ids, sent_mask = calls[0]
    assert torch.equal(sent_ids, ids)
    assert sent_mask[0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert sent_mask[1:].all()


def test_a_context_decoder_reads_present_neighbours_and_ignores_absent_ones():
    vae = _vae(context_blocks=1)
    z, neighbours = torch.randn(1, 2, 6), torch.randn(1, 2, 2, 6)
    present = torch.tensor([[True, False]])
    states = vae.decoder_states(z, neighbours, present)
    changed = neighbours.clone()
    changed[:, 1] += 5  # the absent one (after the block)
    torch.testing.assert_close(vae.decoder_states(z, changed, present), states, rtol=0, atol=1e-6)
    changed[:, 0] += 5  # the present one (before the block)
    assert (vae.decoder_states(z, changed, present) - states).abs().max() > 1e-3
    plain = _vae()  # the same weights (same seed) without context: a block read alone decodes as it would there
    alone = vae.decoder_states(z, neighbours, torch.zeros_like(present))
    torch.testing.assert_close(plain.decoder_states(z), alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(vae.decoder_states(z), alone, rtol=0, atol=1e-6)


def test_sequence_decoding_gives_each_block_its_neighbours_in_the_sequence():
    vae = _vae(context_blocks=1)
    latents = torch.randn(2, 3 * 2, 6)  # 2 sequences of 3 blocks, standardized
    blocks = vae.unstandardize(latents).reshape(2, 3, 2, 6)
    zero = torch.zeros(2, 6)
    for row in range(2):
        for i in range(3):
            before = blocks[row, i - 1] if i > 0 else zero
            after = blocks[row, i + 1] if i < 2 else zero
            present = torch.tensor([[i > 0, i < 2]])
            expected = vae.decode_ids(blocks[row, i][None], torch.stack([before, after])[None], present)[0]
            assert torch.equal(vae.decode_sequence(latents)[row, i * 8 : (i + 1) * 8], expected)
    assert vae.sequence_states(latents).shape == (2, 24, 16)


def test_with_context_keeps_every_weight_and_refuses_a_second_extension():
    vae = _vae()
    extended = vae.with_context(1)
    assert extended.config.context_blocks == 1
    kept = extended.state_dict()
    assert all(torch.equal(kept[k], v) for k, v in vae.state_dict().items())
    assert {k for k in kept if k not in vae.state_dict()} == {"from_context.weight", "from_context.bias", "context_pos"}
    with pytest.raises(ValueError, match="already reads"):
        extended.with_context(1)


def test_with_decoder_layers_keeps_every_weight_decodes_as_before_and_then_trains():
    vae = _vae()
    deeper = vae.with_decoder_layers(3)
    assert deeper.config.decoder_layers == 3 and len(deeper.decoder.layers) == 3
    kept = deeper.state_dict()
    assert all(torch.equal(kept[k], v) for k, v in vae.state_dict().items())
    z = torch.randn(5, 2, 6)
    assert torch.allclose(deeper.decode(z), vae.decode(z), atol=1e-6)  # the new layers start as the identity
    new = deeper.decoder.layers[2]
    assert new.linear1.weight.abs().sum() > 0 and new.norm1.weight.eq(1).all()
    torch.nn.functional.cross_entropy(deeper.decode(z).flatten(0, 1), torch.randint(60, (5 * 8,))).backward()
    assert new.linear2.weight.grad.abs().sum() > 0  # and they learn
    with pytest.raises(ValueError, match="cannot be cut"):
        deeper.with_decoder_layers(1)
