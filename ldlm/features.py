"""`ldlm features`: fill the teacher-feature cache ahead of training, split over processes under torchrun."""
from __future__ import annotations

import os

from ldlm.align.teacher import FrozenTeacher, load_tokenizer
from ldlm.config import VAEExperiment
from ldlm.data import teacher_block_features, training_documents


def extract_features(cfg: VAEExperiment) -> None:
    """Each rank (``RANK``/``WORLD_SIZE`` from torchrun; one process otherwise) writes its own cache shards."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    tokenizer = load_tokenizer(cfg.teacher.name, cfg.teacher.gguf_file)
    teacher = FrozenTeacher(cfg.teacher.name, list(cfg.teacher.layers), gguf_file=cfg.teacher.gguf_file,
                            device_map=cfg.teacher.device_map)
    documents = training_documents(cfg.data, tokenizer)
    teacher_block_features(teacher, tokenizer, documents, cfg.teacher, cfg.data.block_length,
                           cfg.model.latents_per_block, rank=rank, world_size=world)
    print(f"rank {rank}/{world}: teacher features cached for {len(documents)} documents")
