"""ldlm: latent diffusion language models.

``from ldlm import LatentDiffusionLMPipeline`` (and ``LongGeneration``, ``load_pipeline``) loads on first use, so
``import ldlm.errors`` or the ``ldlm`` command's start stay light."""
from __future__ import annotations

import importlib

_EXPORTS = {"LatentDiffusionLMPipeline": "ldlm.pipelines.latent_diffusion",
            "LongGeneration": "ldlm.pipelines.long_generation", "load_pipeline": "ldlm.pipelines.loading"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ldlm' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
