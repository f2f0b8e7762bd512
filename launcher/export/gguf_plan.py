"""What a GGUF export can write, decided from json files alone (standard library only, before any weight loads).

GGUF is llama.cpp's format: the tensor names, the layout of the attention weights and the tokenizer metadata are
per architecture, so each supported architecture is an entry in ARCHITECTURES, and each tokenizer shape one in
TOKENIZER_PRE. Anything else is refused up front, naming it and what is supported.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from launcher.export.source import ExportInputError, ExportSource

ARCHITECTURES = {"LlamaForCausalLM": "llama"}
"""transformers architecture (config.json "architectures") -> llama.cpp architecture (gguf.MODEL_ARCH_NAMES).
Llama-family only: the tiny embedded model, SmolLM2, Llama 2/3 shapes."""

DTYPES = ("f32", "f16", "bf16", "q8_0")
"""--dtype of a GGUF: the type of the 2-D weight matrices (norms and other 1-D tensors stay f32, as llama.cpp's
converter writes them). q8_0 is llama.cpp's 8-bit block format (32 weights and one f16 scale per block)."""

ROPE_TYPES = (None, "default", "linear", "llama3")
"""RoPE variants a GGUF holds. Llama 3.1's "llama3" scaling is written as llama.cpp's rope_freqs tensor, which
llama.cpp reads (tested against transformers' logits) but transformers' own GGUF loader ignores: such a GGUF
loaded back into transformers gets unscaled RoPE. Others (yarn, dynamic, longrope) are refused."""

# A byte-level BPE tokenizer's pre-tokenizer (tokenizer.json "pre_tokenizer", reduced by _pre_shape) -> the
# llama.cpp pre-tokenizer (tokenizer.ggml.pre) that splits text the same way. llama.cpp's own converter recognises
# a tokenizer by hashing its ids on a test text, which only knows published tokenizers; a run's tokenizer (ours is
# trained from the samples) is recognised here by its shape instead.
TOKENIZER_PRE = {
    # GPT-2's regex, applied by ByteLevel itself (GPT-2, our tiny tokenizer, SmolLM2 as transformers loads it)
    (("ByteLevel", True),): "gpt-2",
    # each digit apart, then GPT-2's regex (SmolLM/SmolLM2 as published, StarCoder)
    (("Digits", True), ("ByteLevel", True)): "smollm",
}


@dataclass(frozen=True)
class TokenizerPlan:
    model: str
    """tokenizer.ggml.model: "gpt2" (byte-level BPE) or "llama" (SentencePiece-style BPE with byte fallback)."""
    pre: str
    """tokenizer.ggml.pre: how llama.cpp splits text before BPE."""


def _pre_shape(pre_tokenizer: dict | None) -> tuple:
    steps = (pre_tokenizer or {}).get("pretokenizers", [pre_tokenizer]) if pre_tokenizer else []
    shape = []
    for step in steps:
        if step["type"] == "ByteLevel":
            shape.append(("ByteLevel", step.get("use_regex", True)))
        elif step["type"] == "Digits":
            shape.append(("Digits", step.get("individual_digits", False)))
        else:
            shape.append((step["type"],))
    return tuple(shape)


def plan_tokenizer(folder: Path) -> TokenizerPlan:
    """How the tokenizer saved in `folder` is written into a GGUF; ExportInputError when it cannot be."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ExportInputError(f"{folder} has no tokenizer.json: GGUF export needs the run's fast tokenizer "
                               f"(a run saves it; `AutoTokenizer.from_pretrained(...).save_pretrained(folder)` "
                               f"writes one)")
    doc = json.loads(path.read_text(encoding="utf-8"))
    model, decoder = doc.get("model", {}), doc.get("decoder") or {}
    if model.get("type") == "BPE" and not model.get("byte_fallback") and decoder.get("type") == "ByteLevel":
        shape = _pre_shape(doc.get("pre_tokenizer"))
        pre = TOKENIZER_PRE.get(shape)
        if pre is None:
            raise ExportInputError(f"{path}: byte-level BPE with pre-tokenizer {list(shape)} has no known llama.cpp "
                                   f"equivalent; supported: {[list(s) for s in TOKENIZER_PRE]}")
        return TokenizerPlan("gpt2", pre)
    if model.get("type") == "BPE" and model.get("byte_fallback"):
        return TokenizerPlan("llama", "default")  # SentencePiece-style (Llama 2, Mistral), read by gguf.LlamaHfVocab
    raise ExportInputError(f"{path}: a {model.get('type')} tokenizer (decoder {decoder.get('type')}) cannot be "
                           f"written to GGUF; supported: byte-level BPE, SentencePiece-style BPE with byte fallback")


def rope_type(config: dict) -> str | None:
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    return rope.get("rope_type", rope.get("type"))


def check_gguf_exportable(source: ExportSource) -> TokenizerPlan:
    """Refuse (ExportInputError) what this exporter cannot write, before any weight loads."""
    if source.architecture not in ARCHITECTURES:
        where = "its base model's config.json" if source.adapter_base else f"{source.folder / 'config.json'}"
        raise ExportInputError(f"cannot export {source.architecture} (from {where}) to GGUF: supported "
                               f"architectures are {', '.join(ARCHITECTURES)}. `tunelaunch export RUN --format "
                               f"safetensors` writes any model, for tools that convert it themselves")
    if rope_type(source.config) not in ROPE_TYPES:
        raise ExportInputError(f"cannot export a model with RoPE type {rope_type(source.config)!r} to GGUF yet "
                               f"(config.json rope_parameters); supported: {[t for t in ROPE_TYPES if t]}")
    return plan_tokenizer(source.folder)
