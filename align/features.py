"""Teacher features per latent: the teacher reads each document with left context; states are pooled per span."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ldlm.align.teacher import FrozenTeacher


def _windows(num_tokens: int, chunk: int, context: int) -> list[tuple[int, int, int]]:
    """(window_start, keep_start, keep_end): each chunk of new tokens is read after up to ``context`` earlier ones."""
    return [(max(0, s - context), s, min(s + chunk, num_tokens)) for s in range(0, num_tokens, chunk)]


@torch.no_grad()
def block_features(
    teacher: FrozenTeacher,
    documents: list[list[int]],
    block_length: int,
    latents_per_block: int,
    sink_id: int,
    context: int = 128,
    chunk: int = 256,
    batch_tokens: int = 4096,
    progress: bool = True,
) -> torch.Tensor:
    """Pooled teacher states for every block of every document, in document and block order.

    ``documents`` hold token ids already ending in EOS. Each latent ``k`` of a block gets the mean hidden state
    over its token span ``[k*r, (k+1)*r)``, ``r = block_length // latents_per_block`` (padding excluded; an all-padding
    span gets zeros). Every window is prefixed with ``sink_id`` so the attention-sink outlier lands on that extra
    position, not on real text. Returns fp16 (num_blocks, num_layers, K, H).
    """
    if chunk % block_length:
        raise ValueError("chunk must be a multiple of block_length")
    span = block_length // latents_per_block
    jobs = [(d, w) for d, doc in enumerate(documents) for w in _windows(len(doc), chunk, context)]
    jobs.sort(key=lambda job: job[1][2] - job[1][0])
    states: dict[tuple[int, int], torch.Tensor] = {}
    bar = tqdm(total=sum(len(doc) for doc in documents), desc="teacher features", unit="tok", disable=not progress)
    start = 0
    while start < len(jobs):
        end = start + 1
        while end < len(jobs) and (end - start + 1) * (jobs[end][1][2] - jobs[end][1][0] + 1) <= batch_tokens:
            end += 1
        batch = jobs[start:end]
        longest = max(w[2] - w[0] for _, w in batch) + 1
        ids = torch.zeros(len(batch), longest, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, (d, (w0, _, w1)) in enumerate(batch):
            tokens = [sink_id] + documents[d][w0:w1]
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
        layers = torch.stack(teacher(ids, mask), dim=1).cpu()  # (B, n_layers, T, H)
        for row, (d, (w0, k0, k1)) in enumerate(batch):
            states[(d, k0)] = layers[row, :, 1 + k0 - w0 : 1 + k1 - w0]
            bar.update(k1 - k0)
        start = end
    bar.close()
    out = []
    for d, doc in enumerate(documents):
        full = torch.cat([states[(d, k0)] for _, k0, _ in _windows(len(doc), chunk, context)], dim=1)
        num_blocks = -(-len(doc) // block_length)
        padded = full.new_zeros(full.shape[0], num_blocks * block_length, full.shape[2])
        padded[:, : len(doc)] = full
        counts = torch.zeros(num_blocks * block_length)
        counts[: len(doc)] = 1
        sums = padded.view(full.shape[0], num_blocks * latents_per_block, span, -1).sum(2)
        n = counts.view(num_blocks * latents_per_block, span).sum(1).clamp(min=1)
        pooled = (sums / n[None, :, None]).view(full.shape[0], num_blocks, latents_per_block, -1)
        out.append(pooled.transpose(0, 1).half())
    return torch.cat(out)
