"""Prompt a trained run (or a base model) exactly the way it was trained: the run folder's tokenizer carries
the chat template used in training, and generation stops at that template's end-of-turn token."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from launcher.data.templates import alpaca_messages, get_template, stop_tokens
from launcher.run_dir import read_config


@dataclass
class Generator:
    model: object
    tokenizer: object
    stop_ids: list
    chat: bool
    """Whether prompts go through the chat template (False for runs trained on raw text)."""

    def prompt_ids(self, messages: list[dict] | None = None, text: str | None = None,
                   input_text: str | None = None) -> list[int]:
        """The token ids fed to the model, built as training built a sample's prompt: for chat runs the
        training template with the generation prompt (an Alpaca instruction and its input become the user turn
        as in training); for text runs the tokenizer with its special tokens, as the sample's text was."""
        if self.chat:
            if messages is None:
                messages = alpaca_messages(text, input_text or "", None)
            out = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                     return_dict=True)
            return list(out["input_ids"])
        return list(self.tokenizer(text=text)["input_ids"])

    @torch.inference_mode()
    def complete(self, messages: list[dict] | None = None, text: str | None = None, max_new_tokens: int = 64,
                 do_sample: bool = False, input_text: str | None = None) -> str:
        ids = torch.tensor([self.prompt_ids(messages, text, input_text)])
        out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                  do_sample=do_sample, eos_token_id=self.stop_ids,
                                  pad_token_id=self.tokenizer.pad_token_id)
        return self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def from_run(run_dir: str | Path) -> Generator:
    """Load a run folder: a LoRA adapter (on its base) or a full/merged model, with its saved tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    if (run_dir / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(run_dir, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(run_dir, dtype=torch.float32)
    model.eval()
    template_name = cfg.data.chat_template
    return Generator(model, tokenizer, stop_tokens(tokenizer, template_name), chat=template_name != "none")


def from_base(model_path: str, template_name: str) -> Generator:
    """A base model prompted with a given template (the quickstart's "before")."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    template = get_template(template_name)
    if template is not None and template.jinja:
        tokenizer.chat_template = template.jinja
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    return Generator(model, tokenizer, stop_tokens(tokenizer, template_name), chat=template_name != "none")

