"""Text → blocks: documents cut into consecutive fixed-length token blocks (the first stage of the data flow)."""
from __future__ import annotations

import torch


def split_into_blocks(ids: list[int], block_length: int, eos_id: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Append EOS, cut into blocks of ``block_length`` and right-pad the last one.

    Returns ``(blocks, mask)``, both (num_blocks, block_length); ``mask`` is 1 on real tokens.
    """
    ids = list(ids) + [eos_id]
    num_blocks = -(-len(ids) // block_length)
    blocks = torch.full((num_blocks * block_length,), pad_id, dtype=torch.long)
    mask = torch.zeros(num_blocks * block_length, dtype=torch.long)
    blocks[: len(ids)] = torch.tensor(ids, dtype=torch.long)
    mask[: len(ids)] = 1
    return blocks.view(num_blocks, block_length), mask.view(num_blocks, block_length)


def join_blocks(block_ids: torch.Tensor, eos_id: int) -> list[int]:
    """Concatenate a document's blocks (num_blocks, L) and cut at the first EOS."""
    flat = block_ids.reshape(-1).tolist()
    return flat[: flat.index(eos_id)] if eos_id in flat else flat


def mask_after_eos(blocks: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Masks (…, L) of token blocks (…, L) as training blocks have them: 1 up to and including each block's first EOS."""
    eos = (blocks == eos_id).long()
    return ((eos.cumsum(-1) - eos) == 0).long()
