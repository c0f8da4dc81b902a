"""A frozen pretrained LM that returns hidden states of chosen layers, running only the layers it needs."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from ldlm.align import registry
from ldlm.errors import LdlmError


def _layer_stack(model: nn.Module, num_layers: int) -> tuple[nn.Module, str, nn.ModuleList]:
    """Find the ModuleList holding the transformer blocks (decoders: ``layers``; BERT: ``encoder.layer``)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == num_layers:
            parent_name, _, attr = name.rpartition(".")
            return model.get_submodule(parent_name) if parent_name else model, attr, module
    raise LdlmError(f"cannot find the {num_layers} transformer layers of {type(model).__name__}")


def _from_gguf(path: str, config, dtype: torch.dtype, device_map: str | None) -> nn.Module:
    """The base model of ``config`` with its weights from a GGUF file. Only the tensors that model has a place for
    are dequantized: a teacher truncated to its first blocks never unpacks the others (nor the LM head)."""
    import numpy as np
    from gguf import GGUFReader, dequantize
    from transformers import AutoModel
    from transformers.modeling_gguf_pytorch_utils import (TENSOR_PROCESSORS, TensorProcessor,
                                                          get_gguf_hf_weights_map, read_field)

    with torch.device("meta"):
        skeleton = AutoModel.from_config(config)
    reader = GGUFReader(path)
    processor = TENSOR_PROCESSORS.get(read_field(reader, "general.architecture")[0], TensorProcessor)(
        config=config.to_dict())
    names = get_gguf_hf_weights_map(skeleton, processor)  # GGUF name -> parameter name, kept blocks only
    parsed = {"tensors": {}}  # MoE processors write stacked experts here themselves
    for tensor in reader.tensors:
        if tensor.name not in names:
            continue
        out = processor.process(weights=dequantize(tensor.data, tensor.tensor_type), name=tensor.name,
                                tensor_key_mapping=names, parsed_parameters=parsed)
        if out.name in names:
            parsed["tensors"][names[out.name]] = torch.from_numpy(np.copy(out.weights))
    missing = sorted(set(skeleton.state_dict()) - set(parsed["tensors"]))
    if missing:
        raise LdlmError(f"{path} has no tensor for {missing[0]} ({len(missing)} weights missing)")
    return type(skeleton).from_pretrained(None, config=config, state_dict=parsed["tensors"], dtype=dtype,
                                          device_map=device_map)


class FrozenTeacher(nn.Module):
    """Loads any Hugging Face LM (hub id, local folder, registered name, or GGUF file: its path, or a folder and
    ``gguf_file``) frozen in eval mode.

    ``layers`` are 1-based block indices (layer ``i`` is the output of block ``i``; ``0`` is the embedding output).
    The block stack is truncated after the deepest requested layer, so later blocks never run (nor, from a GGUF
    file, get dequantized).
    """

    def __init__(
        self,
        name_or_path: str,
        layers: list[int],
        gguf_file: str | None = None,
        device: str | torch.device | None = None,
        device_map: str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel
        from transformers.utils import cached_file
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()

        if not layers or min(layers) < 0:
            raise LdlmError(f"teacher layers must be non-negative block indices, got {layers}")
        self.source, gguf_file = registry.locate(name_or_path, gguf_file)
        cuda = torch.cuda.is_available() and device != "cpu"
        dtype = dtype or (torch.bfloat16 if cuda or device_map else torch.float32)
        try:
            config = AutoConfig.from_pretrained(self.source, **({"gguf_file": gguf_file} if gguf_file else {}))
        except OSError as err:
            raise LdlmError(f"cannot load teacher '{name_or_path}': {str(err).splitlines()[0]}") from None
        total = config.num_hidden_layers
        if max(layers) > total:
            raise LdlmError(f"teacher {name_or_path} has {total} layers; requested layer {max(layers)}")
        self.layers = sorted(set(layers))
        keep = max(self.layers + [1])
        config.num_hidden_layers = keep
        if getattr(config, "layer_types", None):
            config.layer_types = config.layer_types[:keep]
        if gguf_file:
            model = _from_gguf(cached_file(self.source, gguf_file), config, dtype, device_map)
        else:
            model = AutoModel.from_pretrained(self.source, config=config, dtype=dtype, device_map=device_map)
        self.model = model.eval().requires_grad_(False)
        self.hidden_size = config.hidden_size
        self.num_layers_total = total
        self._stack = _layer_stack(model, keep)[2]
        if device_map is None:
            self.model.to(device or ("cuda" if cuda else "cpu"))

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    def fingerprint(self) -> str:
        """sha256 over the weights that influence the requested layers (embedding + kept blocks)."""
        digest = hashlib.sha256(str(self.layers).encode())
        for name, tensor in sorted(self.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    def input_embeddings(self) -> torch.Tensor:
        return self.model.get_input_embeddings().weight.detach()

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Hidden states (B, T, H) in fp32 for each requested layer, zeroed where ``attention_mask`` is 0."""
        captured: dict[int, torch.Tensor] = {}

        def hook(index: int):
            def save(_module, _inputs, output):
                captured[index] = output[0] if isinstance(output, tuple) else output

            return save

        handles = [self._stack[i - 1].register_forward_hook(hook(i)) for i in self.layers if i > 0]
        try:
            input_ids = input_ids.to(self.device)
            mask = attention_mask.to(self.device) if attention_mask is not None else torch.ones_like(input_ids)
            out = self.model(input_ids=input_ids, attention_mask=mask, output_hidden_states=0 in self.layers)
        finally:
            for handle in handles:
                handle.remove()
        if 0 in self.layers:
            captured[0] = out.hidden_states[0]
        keep = mask.unsqueeze(-1).float()
        return [captured[i].float() * keep for i in self.layers]


def load_tokenizer(name_or_path: str, gguf_file: str | None = None):
    """The teacher's tokenizer (so VAE tokens line up with teacher positions).

    A folder with a ``tokenizer.json`` is loaded exactly as serialized: ``AutoTokenizer`` may rebuild a
    model-specific class from the vocabulary and tokenize differently from the saved tokenizer.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    source, gguf_file = registry.locate(name_or_path, gguf_file)
    if gguf_file is None and (Path(source) / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(source)
    if not (Path(source).exists() or "/" in source):
        raise LdlmError(f"teacher '{source}' is neither a registered name, a folder, a .gguf file nor a hub id")
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        return AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as err:
        raise LdlmError(f"cannot load the tokenizer of '{name_or_path}': {str(err).splitlines()[0]}") from None


def pad_id_of(tokenizer) -> int:
    """The id that pads a tokenizer's blocks: its pad token, else EOS."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
