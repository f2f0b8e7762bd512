"""A reward model named `run:PATH` in trainer.rewards: a finished run of trainer=reward, loaded for scoring (worker
side: this imports torch, transformers and peft, so only the trainer imports it)."""
from __future__ import annotations

import json
from pathlib import Path


def load_reward_model(folder: str | Path):
    """(model, tokenizer) of a reward run: its sequence classifier with a one-label score head, in eval mode and
    frozen, and the tokenizer saved with it (which carries the chat template the scores were trained on).

    A LoRA run holds an adapter: its base (named in adapter_config.json) is loaded and the adapter, whose
    modules_to_save include the trained score head, is merged in, so scoring costs no adapter indirection."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = Path(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    adapter_config = folder / "adapter_config.json"
    if adapter_config.is_file():
        from peft import PeftModel
        from trl.trainer.reward_trainer import suppress_seqcls_warning

        base = json.loads(adapter_config.read_text()).get("base_model_name_or_path")
        if not base:
            raise ValueError(f"{adapter_config} names no base model (base_model_name_or_path)")
        with suppress_seqcls_warning():  # the base's fresh score head is replaced by the adapter's saved one
            model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
        if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(len(tokenizer))  # as training did (launcher.models.load_model)
        model = PeftModel.from_pretrained(model, folder).merge_and_unload()
    else:
        model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1)
    # The score is read at the last non-pad token, so the model must know the tokenizer's pad token.
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config._name_or_path = str(folder)  # trl logs a reward model as rewards/<last part of this>/mean
    model.eval().requires_grad_(False)
    return model, tokenizer
