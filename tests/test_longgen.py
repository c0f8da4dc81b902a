from collections import deque

import pytest
import torch

from ldlm.cli import main
from ldlm.pipelines.long_generation import LongGeneration, repeated_share

PROMPT = "Zizzi is a cheap coffee shop serving Italian food in the riverside. It has a"


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024


def test_long_generation_streams_thousands_of_tokens_in_a_bounded_window(make_pipeline):
    pipe = make_pipeline()
    widths, finite = [], []
    forward = pipe.transformer.forward

    def spy(x, *args):
        widths.append(x.shape[1])
        out = forward(x, *args)
        finite.append(bool(torch.isfinite(out).all()))
        return out

    pipe.transformer.forward = spy
    run = LongGeneration(pipe, PROMPT, max_tokens=2500, new_blocks=2, num_inference_steps=2, max_repeat=1.0,
                         stop_at_eos=False, generator=torch.Generator().manual_seed(0))
    tokens, peaks = 0, []
    for (text,) in run:
        tokens += len(text.split())  # the word tokenizer: one token per word
        peaks.append(_peak_rss_mb())
    assert run.stop_reasons == ["length"] and tokens >= 2500
    assert max(widths) <= pipe.transformer.config.max_blocks * 2 and all(finite)
    assert peaks[-1] - peaks[len(peaks) // 5] < 25  # the peak stops growing after the first groups


def test_the_pipeline_saves_its_long_document_group_size(make_pipeline, tmp_path):
    from ldlm.pipelines.loading import load_pipeline

    pipe = make_pipeline()
    assert LongGeneration(pipe, None).new_blocks == 3  # unset: half the 6-block window
    pipe.register_to_config(new_blocks=2)
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = load_pipeline(str(tmp_path / "pipe"))
    assert LongGeneration(loaded, None).new_blocks == 2 and LongGeneration(loaded, None, new_blocks=5).new_blocks == 5
    with pytest.raises(ValueError, match="new_blocks must be an integer in 1..6"):
        type(pipe)(pipe.vae, pipe.transformer, pipe.scheduler, pipe.tokenizer, new_blocks=7)


def test_prompt_is_kept_verbatim_and_eos_ends_the_document(make_pipeline):
    pipe = make_pipeline()
    run = LongGeneration(pipe, PROMPT, max_tokens=200, new_blocks=3, num_inference_steps=2,
                         generator=torch.Generator().manual_seed(1))
    text = "".join(chunk for (chunk,) in run)
    assert text.startswith(PROMPT)
    assert run.stop_reasons[0] in ("eos", "length")
    docs = LongGeneration(pipe, None, max_tokens=40, num_documents=3, num_inference_steps=2,
                          generator=torch.Generator().manual_seed(1))
    chunks = list(docs)
    assert all(len(group) == 3 for group in chunks) and all(r is not None for r in docs.stop_reasons)


def test_looping_groups_are_resampled_then_stopped(make_pipeline):
    pipe = make_pipeline()
    block = torch.tensor([pipe.tokenizer("Zizzi is a cheap coffee shop serving Italian")["input_ids"]])
    looped = pipe.vae.standardize(pipe.vae.encode(block, torch.ones_like(block)))  # (1, K, C)
    run = LongGeneration(pipe, None, max_tokens=1000, new_blocks=1, num_inference_steps=2, retries=2, patience=3)
    run._group = lambda context, held: looped.expand(len(context), -1, -1)  # the model says the same thing forever
    texts = [chunk for (chunk,) in run]
    assert run.stop_reasons == ["loop"] and len(texts) == 4  # the first group is new, then 3 looping ones
    assert run.resampled == 3 * 2 and (run.groups, run.guarded) == (4, 3)


def test_repeated_share():
    assert repeated_share([4, 1, 2], [1, 2, 3, 4, 1, 2, 3]) == 1.0  # read on from the history's last 3 tokens
    assert repeated_share([9, 1, 2, 3, 4], [1, 2, 3, 4, 5]) == pytest.approx(1 / 5)
    assert repeated_share([9, 9, 9], [1, 2, 3, 4]) == 0.0


@pytest.mark.parametrize("kwargs,match", [
    ({"new_blocks": 0}, "new_blocks"), ({"new_blocks": 7}, "new_blocks"), ({"max_tokens": 0}, "max_tokens"),
    ({"prompt": ""}, "prompt"), ({"max_repeat": 0}, "anti-loop"), ({"num_inference_steps": 0}, "num_inference"),
])
def test_long_generation_rejects_bad_arguments(make_pipeline, kwargs, match):
    with pytest.raises(ValueError, match=match):
        LongGeneration(make_pipeline(), **kwargs)


def test_longgen_command_writes_the_document(make_pipeline, tmp_path, capsys):
    make_pipeline().save_pretrained(tmp_path / "pipe")
    out = tmp_path / "doc.txt"
    assert main(["longgen", "--model", str(tmp_path / "pipe"), "--output", str(out), "--prompt", PROMPT,
                 "--max-tokens", "300", "--steps", "2", "--ignore-eos", "--max-repeat", "1"]) == 0
    assert out.read_text().startswith(PROMPT)
    assert f"to {out}" in capsys.readouterr().out
    assert main(["longgen", "--model", str(tmp_path / "pipe"), "--output", str(tmp_path / "no" / "doc.txt")]) == 2
    assert main(["longgen", "--model", str(tmp_path / "pipe"), "--output", str(out), "--new-blocks", "9",
                 "--overwrite"]) == 2
    assert "new_blocks" in capsys.readouterr().err


def test_without_eos_padding_and_eos_are_dropped_and_only_a_silent_model_ends(make_pipeline):
    pipe = make_pipeline()
    cfg = pipe.vae.config
    assert cfg.pad_token_id != cfg.eos_token_id  # the fixture's tokenizer keeps them apart
    words = pipe.tokenizer("Zizzi is a cheap pub", add_special_tokens=False)["input_ids"]
    blocks = [words + [cfg.eos_token_id] + [cfg.pad_token_id] * 2, [cfg.eos_token_id] + [cfg.pad_token_id] * 7]
    drawn = iter([0] + [1] * 20)
    widths = []

    def draw(context, held):
        widths.append(context.shape[1] // cfg.latents_per_block)
        return torch.zeros(1, cfg.latents_per_block, cfg.latent_channels)

    run = LongGeneration(pipe, "Zizzi is a cheap pub near the river", max_tokens=100, new_blocks=1,
                         stop_at_eos=False, max_repeat=1.0, patience=2)
    run._group, run._ids = draw, lambda group, context: [blocks[next(drawn)]]
    texts = [chunk for (chunk,) in run]
    # the context (5 blocks at most, 1 written) halves after each all-EOS group, 5 → 2 → 1 → 0 blocks; then 2 more
    # groups with none and nothing held end it
    assert texts[1:] == [" Zizzi is a cheap pub"] + [""] * 5 and run.stop_reasons == ["eos"]
    assert widths == [1, 1, 1, 1, 0, 0]


def test_without_eos_the_document_goes_on_from_its_own_text(make_pipeline):
    """A model whose every group ends its text still writes to max_tokens: each group's context is the text so far
    encoded again (its last tokens, ending where the text ends), never the ending it drew; tokens are held only
    while the text is shorter than a block."""
    pipe = make_pipeline()
    cfg = pipe.vae.config
    words = pipe.tokenizer("Zizzi is a cheap pub", add_special_tokens=False)["input_ids"]
    encoded, held_seen, written = [], [], []
    encode = pipe.vae.encode_sequence

    def spy(ids, mask=None):
        encoded.append(ids.reshape(-1).tolist())
        assert encoded[-1] == written[-len(encoded[-1]) :]  # the context ends where the text does
        return encode(ids, mask)

    def draw(context, held):
        held_seen.append((context.shape[1], held))
        return torch.zeros(1, cfg.latents_per_block, cfg.latent_channels)

    def ids(group, context):  # the model writes the held tokens, the sentence and an end-of-text, cut to one block
        held = held_seen[-1][1]
        partial = list(held[0].values())[0] if held and held[0] else []
        row = (partial + words + [cfg.eos_token_id] + [cfg.pad_token_id] * cfg.block_length)[: cfg.block_length]
        written.extend(token for token in row[len(partial) :] if token not in (cfg.eos_token_id, cfg.pad_token_id))
        return [row]

    pipe.vae.encode_sequence = spy
    run = LongGeneration(pipe, None, max_tokens=60, new_blocks=1, stop_at_eos=False, max_repeat=1.0)
    run._group, run._ids = draw, ids
    text = "".join(chunk for (chunk,) in run)
    assert run.stop_reasons == ["length"] and run.token_counts == [60]
    assert len(text.split()) == 60 and set(text.split()) == set("Zizzi is a cheap pub".split())
    assert encoded and all(cfg.eos_token_id not in row and cfg.pad_token_id not in row for row in encoded)
    assert any(held and held[0] for width, held in held_seen if not width)  # a text shorter than a block is held
    assert all(not (held and held[0]) for width, held in held_seen if width)  # after that nothing is


def test_without_eos_a_stopped_short_document_does_not_take_the_others_context(make_pipeline):
    pipe = make_pipeline()
    cfg = pipe.vae.config
    length, k = cfg.block_length, cfg.latents_per_block
    long, short = list(range(5, 5 + 3 * length + 2)), [5, 6, 7]  # three blocks and two tokens; under one block
    run = LongGeneration(pipe, None, max_tokens=500, num_documents=2, new_blocks=1, stop_at_eos=False)
    encoded = []
    encode = pipe.vae.encode_sequence
    pipe.vae.encode_sequence = lambda ids, mask=None: encoded.append(ids.tolist()) or encode(ids, mask)
    context, partials = run._text_context([deque(long), deque(short)], 4)  # both going: the short one sets none
    assert context.shape[1] == 0 and not encoded and partials == [long[-2:], short]
    run.stop_reasons = [None, "loop"]
    context, partials = run._text_context([deque(long), deque(short)], 4)  # only the live one counts now
    assert context.shape[1] == 3 * k and partials == [[], []]
    assert encoded == [[long[-3 * length :]] * 2]  # the stopped row holds a placeholder: the live one's tail


def test_a_prompt_longer_than_max_tokens_ends_the_document(make_pipeline):
    run = LongGeneration(make_pipeline(), PROMPT, max_tokens=5, new_blocks=2, num_inference_steps=2)
    text = "".join(chunk for (chunk,) in run)
    assert text == PROMPT and run.stop_reasons == ["length"]


def test_a_context_decoder_reads_each_group_after_the_last_context_block(make_pipeline):
    pipe = make_pipeline()
    pipe.vae = pipe.vae.with_context(1).eval()
    cfg = pipe.vae.config
    k = cfg.latents_per_block
    context, group = torch.randn(2, 3 * k, cfg.latent_channels), torch.randn(2, 2 * k, cfg.latent_channels)
    run = LongGeneration(pipe, None, max_tokens=10, new_blocks=2)
    expected = pipe.vae.decode_sequence(torch.cat([context[:, -k:], group], 1))[:, cfg.block_length :]
    assert run._ids(group, context) == expected.tolist()
    assert run._ids(group, context[:, :0]) == pipe.vae.decode_sequence(group).tolist()  # no context yet


def test_a_cached_context_is_computed_once_per_group_and_samples_as_the_joint_pass(make_pipeline):
    from ldlm.dit.model import LatentDiT

    pipe = make_pipeline()
    torch.manual_seed(1)
    pipe.transformer = LatentDiT.tiny(latent_channels=8, latents_per_block=2, max_blocks=6, cached_context=True)
    for p in pipe.transformer.parameters():
        torch.nn.init.normal_(p, std=0.05)
    model, calls = pipe.transformer, []
    compute = model._context
    model._context = lambda inputs: calls.append(inputs.shape[1]) or compute(inputs)
    run = LongGeneration(pipe, None, max_tokens=4 * 3 * pipe.vae.config.block_length, new_blocks=2,
                         num_inference_steps=3, generator=torch.Generator().manual_seed(0))
    run.fixed_ids(4 * 2 * pipe.vae.config.block_length)  # 4 groups: none, 2, 4 and 4 context blocks
    assert calls == [4, 8, 8]  # latents per context: once per group, not per step

    known = torch.randn(2, 12, 8)
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[:, :8] = True
    cached = pipe.denoise(known, mask, num_inference_steps=3, generator=torch.Generator().manual_seed(0))
    forward = model.forward

    def joint(*args, **kwargs):  # with autograd the model takes its one joint pass over the window
        with torch.enable_grad():
            return forward(*args, **kwargs).detach()

    model.forward = joint
    full = pipe.denoise(known, mask, num_inference_steps=3, generator=torch.Generator().manual_seed(0))
    assert len(calls) == 4
    torch.testing.assert_close(cached, full, rtol=1e-4, atol=1e-4)
