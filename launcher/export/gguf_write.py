"""Write a loaded (merged) Llama-family model as one GGUF file, as llama.cpp's convert_hf_to_gguf.py does for
`LlamaModel`: the same hyperparameter keys, tensor names (gguf.get_tensor_name_map), q/k row permutation and
per-tensor types (gguf.quants), so llama.cpp, Ollama and LM Studio load it, and transformers loads it back
(`from_pretrained(folder, gguf_file=name)`, which undoes the permutation).

Precision, measured on SmolLM2-135M-Instruct (tests/integration/test_export.py): the largest |logit difference|
between the GGUF loaded back by transformers and the merged model, on the test's 25-token chat prompt (logits up to
~38), was 0.0 for f32, 0.041 for f16, 0.20 for bf16 and 1.18 for q8_0, every position keeping its most likely next
token (on a 42-token prompt: bf16 0.28, q8_0 1.32 with 95% of the positions keeping it). The tests hold them to
1e-4, 0.1, 0.5 and 2.0.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import gguf
import numpy as np
import torch

from launcher.export.gguf_plan import ARCHITECTURES, TokenizerPlan, rope_type
from launcher.export.gguf_vocab import add_vocab

FILE_TYPES = {
    "f32": (gguf.LlamaFileType.ALL_F32, gguf.GGMLQuantizationType.F32),
    "f16": (gguf.LlamaFileType.MOSTLY_F16, gguf.GGMLQuantizationType.F16),
    "bf16": (gguf.LlamaFileType.MOSTLY_BF16, gguf.GGMLQuantizationType.BF16),
    "q8_0": (gguf.LlamaFileType.MOSTLY_Q8_0, gguf.GGMLQuantizationType.Q8_0),
}
"""--dtype -> (the file's general.file_type, the type of its 2-D weights)."""


def permute_rotary(weights: torch.Tensor, n_head: int) -> torch.Tensor:
    """Reorder q/k projection rows from transformers' rotary layout (each head's first half of dimensions, then its
    second half) to llama.cpp's (interleaved pairs): convert_hf_to_gguf.py `LlamaModel.permute`. transformers'
    GGUF loader applies the inverse."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _tensor_type(gguf_name: str, data: np.ndarray, weight_type: gguf.GGMLQuantizationType):
    # llama.cpp reads 1-D tensors and norms as f32 only (convert_hf_to_gguf.py prepare_tensors)
    if data.ndim <= 1 or gguf_name.endswith("_norm.weight"):
        return gguf.GGMLQuantizationType.F32
    return weight_type


def _add_tensors(writer: gguf.GGUFWriter, model, config: dict, weight_type: gguf.GGMLQuantizationType) -> None:
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config["num_hidden_layers"])
    n_head = config["num_attention_heads"]
    n_kv_head = config.get("num_key_value_heads") or n_head
    tied = model.config.tie_word_embeddings
    for name, tensor in model.state_dict().items():
        if name.endswith(".rotary_emb.inv_freq") or (tied and name == "lm_head.weight"):
            continue  # recomputed by the reader; a tied head is the embedding (no output.weight, as llama.cpp wants)
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ValueError(f"no GGUF name for tensor {name!r} of a Llama model")
        data = tensor.detach().to(torch.float32)
        if name.endswith(("q_proj.weight", "q_proj.bias")):
            data = permute_rotary(data, n_head)
        elif name.endswith(("k_proj.weight", "k_proj.bias")):
            data = permute_rotary(data, n_kv_head)
        array = data.numpy()
        qtype = _tensor_type(gguf_name, array, weight_type)
        try:
            raw = gguf.quants.quantize(array, qtype)
        except gguf.QuantError:  # a row length q8_0 cannot block (not a multiple of 32): f16, as the converter does
            qtype = gguf.GGMLQuantizationType.F16
            raw = gguf.quants.quantize(array, qtype)
        writer.add_tensor(gguf_name, raw, raw_dtype=qtype)
    if rope_type(config) == "llama3":
        writer.add_tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight",
                          llama3_rope_factors(config).numpy(), raw_dtype=gguf.GGMLQuantizationType.F32)


def llama3_rope_factors(config: dict) -> torch.Tensor:
    """Llama 3.1's RoPE scaling as llama.cpp reads it: a rope_freqs tensor of one divisor per rotary frequency
    (convert_hf_to_gguf.py LlamaModel.generate_extra_tensors; transformers' `_compute_llama3_parameters`)."""
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    base = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factor = rope.get("factor", 8.0)
    low_freq_factor, high_freq_factor = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old_context = rope.get("original_max_position_embeddings", config.get("original_max_position_embeddings", 8192))
    low_freq_wavelen, high_freq_wavelen = old_context / low_freq_factor, old_context / high_freq_factor
    factors = []
    for freq in freqs.tolist():
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            factors.append(1.0)
        elif wavelen > low_freq_wavelen:
            factors.append(factor)
        else:
            smooth = (old_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(factors, dtype=torch.float32)


def _add_hyperparameters(writer: gguf.GGUFWriter, config: dict, file_type: gguf.LlamaFileType) -> None:
    """convert_hf_to_gguf.py TextModel.set_gguf_parameters + LlamaModel.set_gguf_parameters, for the keys a
    Llama config has."""
    n_head = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // n_head
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(config.get("num_key_value_heads") or n_head)
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_theta = rope.get("rope_theta", config.get("rope_theta"))
    if rope_theta is not None:
        writer.add_rope_freq_base(rope_theta)
    if rope_type(config) == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope["factor"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    if config.get("head_dim") is not None:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_file_type(file_type)
    writer.add_vocab_size(config["vocab_size"])
    writer.add_rope_dimension_count(head_dim)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def write_gguf(model, tokenizer, tokenizer_dir: Path, plan: TokenizerPlan, dtype: str, output: Path,
               name: str) -> Path:
    """Write `model` (a merged LlamaForCausalLM) and its tokenizer to `output`, atomically: a file that exists is
    complete (an export that fails leaves none)."""
    file_type, weight_type = FILE_TYPES[dtype]
    config = model.config.to_dict()
    arch = ARCHITECTURES[type(model).__name__]
    end_of_turn = model.generation_config.eos_token_id if model.generation_config is not None else None
    end_of_turn = [end_of_turn] if isinstance(end_of_turn, int) else list(end_of_turn or [])

    partial = output.with_name(output.name + ".partial")
    writer = gguf.GGUFWriter(partial, arch=arch)
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name)
        _add_hyperparameters(writer, config, file_type)
        add_vocab(writer, plan, tokenizer, tokenizer_dir, config["vocab_size"], end_of_turn)
        _add_tensors(writer, model, config, weight_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(partial, output)
    finally:
        writer.close()
        partial.unlink(missing_ok=True)
    return output
