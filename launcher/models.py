"""Build the tokenizer and model a run trains: dtype, attention kernel, quantization, chat template, LoRA.

The configuration arrives resolved (no `auto` left), so this module only carries the choices out.
"""
from __future__ import annotations

import logging

import torch

from launcher.config.lora_inits import LORA_INITS
from launcher.config.schema import RunConfig
from launcher.data.templates import get_template

log = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def load_tokenizer(cfg: RunConfig):
    """The base tokenizer with the run's chat template installed and its tokens present."""
    from transformers import AutoTokenizer

    m = cfg.model
    tok = AutoTokenizer.from_pretrained(m.name_or_path, revision=m.revision, gguf_file=m.gguf_file,
                                        trust_remote_code=m.trust_remote_code)
    tok.padding_side = cfg.data.padding_side
    tok.model_max_length = cfg.model.max_length
    template = get_template(cfg.data.chat_template)
    if template is not None and template.jinja is not None:
        tok.chat_template = template.jinja
    elif template is not None and not tok.chat_template:
        raise ValueError(f"data.chat_template is 'tokenizer' but {m.name_or_path} has no chat template; "
                         "use chatml, zephyr or a Jinja file")
    if template is not None:
        missing = [t for t in template.special_tokens if t not in tok.get_vocab()]
        if missing:
            tok.add_special_tokens({"additional_special_tokens": missing})
            log.warning("added %s to the vocabulary for the %s template", missing, template.name)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def packs_padding_free(cfg: RunConfig) -> bool:
    """A method that packs (sft, the pairwise trainers), with best-fit packing: batches are one row of samples with
    their boundaries (launcher/attention.py; launcher/trainers/packed_pairs.py for the pairwise ones)."""
    from launcher.methods import METHODS

    method = METHODS.get(cfg.trainer.name)  # (wrapping is sft's alone: the plan refuses it for the others)
    return bool(method and method.packs and cfg.data.packing and not cfg.data.wrap_packed_sequences)


def load_model(cfg: RunConfig, tok, model_class=None, **kwargs):
    """The base model, in the dtype and attention kernel the plan chose, quantized for QLoRA."""
    from transformers import AutoModelForCausalLM, set_seed

    m = cfg.model
    model_class = model_class or AutoModelForCausalLM
    compute = DTYPES[cfg.precision.mixed_precision]
    from launcher.resolve import automatic_weights_dtype

    # resolved by the plan (launcher.resolve, step 1); "auto" only in run folders written before the key existed
    weights = cfg.precision.weights_dtype
    dtype = DTYPES[automatic_weights_dtype(cfg) if weights == "auto" else weights]
    quant = quantization_config(cfg, compute)
    # Weights the checkpoint lacks (a reward model's new score head) are drawn here, before the Trainer seeds:
    # without a seed two runs of one config started from different heads.
    set_seed(cfg.training.seed)
    attention = m.attn_implementation
    if attention == "sdpa" and packs_padding_free(cfg):
        from launcher import attention as packed_attention

        attention = packed_attention.register()
    model = model_class.from_pretrained(
        m.name_or_path, revision=m.revision, gguf_file=m.gguf_file, dtype=dtype,
        attn_implementation=attention, trust_remote_code=m.trust_remote_code,
        quantization_config=quant, **kwargs)
    if m.gguf_file:
        _drop_gguf_marker(model)
    if len(tok) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tok))
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    quantized = sum(1 for mod in model.modules() if type(mod).__name__ in ("Linear4bit", "Linear8bitLt"))
    log.info("model %s: %.1fM parameters, dtype %s, attention %s%s", m.name_or_path,
             sum(p.numel() for p in model.parameters()) / 1e6, dtype, attention,
             f", {cfg.quantization.mode}: {quantized} quantized linear layers" if quant else "")
    return model


def quantization_config(cfg: RunConfig, compute_dtype):
    if cfg.quantization.mode == "none":
        return None
    from transformers import BitsAndBytesConfig

    if cfg.quantization.mode == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    # The compute dtype follows the run's precision (fp16 hard-coded would overflow bf16-trained models).
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype, bnb_4bit_quant_storage=compute_dtype)


def lora_config(cfg: RunConfig, task_type: str = "CAUSAL_LM"):
    if not cfg.peft.enabled:
        return None
    from peft import LoraConfig

    p = cfg.peft
    targets = p.target_list()
    # A SEQ_CLS model's score head is added to modules_to_save by peft itself.
    return LoraConfig(r=p.r, lora_alpha=p.alpha, lora_dropout=p.dropout, target_modules=targets,
                      bias="none", task_type=task_type, use_dora=p.use_dora, use_rslora=p.use_rslora,
                      init_lora_weights=LORA_INITS[p.init.lower()], modules_to_save=list(p.modules_to_save) or None,
                      # A tied input/output embedding stays tied when one of them is trained in full (untied, the
                      # merged model would carry two matrices; peft warns when asked on an untied model).
                      ensure_weight_tying=bool(p.modules_to_save) and _ties_embeddings(cfg))


def _ties_embeddings(cfg: RunConfig) -> bool:
    from transformers import AutoConfig

    m = cfg.model
    config = AutoConfig.from_pretrained(m.name_or_path, revision=m.revision, gguf_file=m.gguf_file,
                                        trust_remote_code=m.trust_remote_code)
    return any(getattr(c, "tie_word_embeddings", False) for c in (config, config.get_text_config()))


def _drop_gguf_marker(model) -> None:
    """A GGUF checkpoint is dequantized on load but still flagged quantized, and the Trainer then refuses to
    train it; the weights are plain tensors, so the flag is dropped."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
