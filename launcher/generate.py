"""Prompt a trained run (or a base model) exactly the way it was trained: the run folder's tokenizer carries
the chat template used in training (tools rendered as in training), and generation stops at that template's
end-of-turn token. A reply's reasoning (its `<think>` block) is hidden unless asked for."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from launcher.data.reasoning import shown_reply
from launcher.data.templates import alpaca_messages, get_template, stop_tokens
from launcher.run_dir import model_source, read_config


@dataclass
class Generator:
    model: object
    tokenizer: object
    stop_ids: list
    chat: bool
    """Whether prompts go through the chat template (False for runs trained on raw text)."""
    source: Path | None = None
    """The folder the weights came from (a run's latest checkpoint while it has no final model)."""

    def prompt_ids(self, messages: list[dict] | None = None, text: str | None = None,
                   input_text: str | None = None, tools: list[dict] | None = None) -> list[int]:
        """The token ids fed to the model, built as training built a sample's prompt: for chat runs the
        training template with the generation prompt (an Alpaca instruction and its input become the user turn
        as in training; `tools`, the functions' schemas, rendered as a row's tools column was); for text runs
        the tokenizer with its special tokens, as the sample's text was."""
        if self.chat:
            if messages is None:
                messages = alpaca_messages(text, input_text or "", None)
            out = self.tokenizer.apply_chat_template(messages, tools=tools or None, add_generation_prompt=True,
                                                     tokenize=True, return_dict=True)
            return list(out["input_ids"])
        return list(self.tokenizer(text=text)["input_ids"])

    def complete(self, messages: list[dict] | None = None, text: str | None = None, max_new_tokens: int = 64,
                 do_sample: bool = False, input_text: str | None = None, tools: list[dict] | None = None,
                 show_reasoning: bool = False) -> str:
        """The model's reply to a prompt; its reasoning (a `<think>` block) is left out unless show_reasoning."""
        raw = self.reply(self.prompt_ids(messages, text, input_text, tools), max_new_tokens,
                         temperature=1.0 if do_sample else 0.0)
        return shown_reply(raw, show_reasoning)

    @torch.inference_mode()
    def reply(self, prompt_ids: list[int], max_new_tokens: int = 64, temperature: float = 0.0,
              streamer=None) -> str:
        """The model's answer to these prompt ids, up to a stop token, without special tokens. temperature 0
        decodes greedily; streamer (a transformers TextStreamer) is handed each new token as it comes."""
        ids = torch.tensor([prompt_ids])
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                  eos_token_id=self.stop_ids, pad_token_id=self.tokenizer.pad_token_id,
                                  streamer=streamer, **sampling)
        return self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def from_run(run_dir: str | Path) -> Generator:
    """Load a run folder: a LoRA adapter (on its base) or a full/merged model, with its saved tokenizer. A run
    that has no final model yet (still training, or stopped) is loaded from its latest complete checkpoint."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    source = _run_source(run_dir)
    tokenizer = AutoTokenizer.from_pretrained(source)
    if (source / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    model.eval()
    template_name = cfg.data.chat_template
    return Generator(model, tokenizer, stop_tokens(tokenizer, template_name), chat=template_name != "none",
                     source=source)


def _run_source(run_dir: Path) -> Path:
    """Where a run's weights and tokenizer are: its final model, else its latest complete checkpoint."""
    source = model_source(run_dir)
    if source is None:
        raise FileNotFoundError(f"{run_dir} holds no model yet: no final model and no complete checkpoint")
    return source


def _base_tokenizer(model_path: str, template_name: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    template = get_template(template_name)
    if template is not None and template.jinja:
        tokenizer.chat_template = template.jinja
    return tokenizer


def from_base(model_path: str, template_name: str) -> Generator:
    """A base model prompted with a given template (the quickstart's "before")."""
    from transformers import AutoModelForCausalLM

    tokenizer = _base_tokenizer(model_path, template_name)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    return Generator(model, tokenizer, stop_tokens(tokenizer, template_name), chat=template_name != "none")



def load(target: str | Path, template: str | None = None) -> Generator:
    """What `generate` and `chat` talk to: a run folder (prompted with its training template) or a plain model
    folder prompted with `template` (None: the tokenizer's own chat template when it has one, else plain text)."""
    from launcher.console import hide_model_file_bars

    hide_model_file_bars()
    target = Path(target)
    template = _template_of(target, template)
    return from_run(target) if template is None else from_base(str(target), template)


def _template_of(target: Path, template: str | None) -> str | None:
    """None for a run folder (its training template decides), else the template a plain model folder is prompted
    with; FileNotFoundError when target is neither, or the template is unknown."""
    from launcher.data.templates import NAMES, model_chat_template

    if (target / "config.yaml").is_file():
        return None
    if not (target.is_dir() and (target / "config.json").is_file()):
        raise FileNotFoundError(f"{target} is neither a run folder (with config.yaml) nor a model folder "
                                "(with config.json)")
    if template is None:
        template = "tokenizer" if model_chat_template(str(target)) else "none"
    if template not in NAMES and not Path(template).expanduser().is_file():
        raise FileNotFoundError(f"template {template!r} is neither one of {', '.join(NAMES)} nor a Jinja file")
    return template


def load_tokenizer(target: str | Path, template: str | None = None):
    """The tokenizer `load` prompts with and whether prompts go through its chat template, without the weights:
    prompts are checked against it before the model loads (seconds to minutes)."""
    from transformers import AutoTokenizer

    target = Path(target)
    template = _template_of(target, template)
    if template is None:
        return AutoTokenizer.from_pretrained(_run_source(target)), read_config(target).data.chat_template != "none"
    return _base_tokenizer(str(target), template), template != "none"
