"""One canonical row -> the token ids the model reads and the labels it learns (-100 = not trained).

This is the single place where a row is rendered and masked: the sft trainer trains on its output and
`tunelaunch prepare` prints it, so what `prepare` shows is what the model sees.

What is trained (trainer.train_on=completion, the default):
- chat messages (and Alpaca, and prompt/completion under a chat template): every assistant reply with the
  end-of-turn token that closes it. Our templates mark them with `{% generation %}`; a template without markers
  gets trl's training variant when trl knows it, else the assistant spans are found by rendering each prefix of
  the conversation (which needs a template that renders earlier turns the same whatever follows).
- prompt/completion without a template: the completion (and the eos token, with data.add_eos_token).
- text: every token (and the eos token, with data.add_eos_token).
With train_on=all every token is trained.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from launcher.data.load import sft_row
from launcher.data.templates import has_generation_markers

IGNORE = -100


class EncodeError(ValueError):
    """A row the tokenizer and template cannot turn into a training sample; the message says why and how to fix."""


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]

    @property
    def trained(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


class SFTEncoder:
    """Encodes canonical rows of one format for the sft trainer; build once per run, call per row."""

    def __init__(self, tokenizer, fmt: str, chat_template: str, train_on: str = "completion",
                 add_eos_token: bool = True):
        self.tok = tokenizer
        self.fmt = fmt
        self.chat = chat_template != "none"
        self.template_name = chat_template
        self.train_on = train_on
        self.add_eos_token = add_eos_token
        self.mask_template: Optional[str] = None
        """A template with generation markers used for the masks (the tokenizer's own, or trl's variant)."""
        self.mask_mode = "all" if train_on == "all" else "completion"
        if self.chat and train_on == "completion" and self._renders_messages():
            self.mask_template, self.mask_mode = self._masking_template()

    def __call__(self, row: dict) -> Encoded:
        sample = sft_row(row, self.fmt, self.chat)
        if "messages" in sample:
            return self._messages(sample["messages"])
        if "prompt" in sample:
            return self._prompt_completion(sample["prompt"], sample["completion"])
        return self._text(sample["text"])

    def many(self, rows: list[dict]) -> list[Encoded]:
        """What calling it on each row gives, with the tokenizer called once for all of them: its batch encoder
        runs on every core, and one call per row made preparation half as fast as a batched `datasets.map`
        (benchmarks/preprocessing.py). A batch with any row that the plain path would refuse or treat apart
        is encoded row by row, so that row's error is the one raised."""
        try:
            batch = self._batch([sft_row(row, self.fmt, self.chat) for row in rows])
        except Exception:
            batch = None
        return batch if batch is not None else [self(row) for row in rows]

    def _batch(self, samples: list[dict]) -> Optional[list[Encoded]]:
        if all("text" in s for s in samples):
            ids = self.tok(text=[self._with_eos(s["text"]) for s in samples])["input_ids"]
            return [Encoded(list(i), list(i)) for i in ids]
        if not all("messages" in s for s in samples) or self.mask_mode == "prefix":
            return None  # prompt/completion (two tokenisations to align) and prefix masks: row by row
        conversations = [s["messages"] for s in samples]
        if self.mask_mode == "all":
            ids = self.tok.apply_chat_template(conversations, tokenize=True, return_dict=True)["input_ids"]
            return [Encoded(list(i), list(i)) for i in ids]
        out = self.tok.apply_chat_template(conversations, tokenize=True, return_dict=True,
                                           return_assistant_tokens_mask=True, chat_template=self.mask_template)
        ids, masks = [list(i) for i in out["input_ids"]], [list(m) for m in out["assistant_masks"]]
        if self.mask_template != self.tok.chat_template:
            plain = self.tok.apply_chat_template(conversations, tokenize=True, return_dict=True)["input_ids"]
            if any(list(p) != i for p, i in zip(plain, ids)):
                return None
        if any(1 not in m for m in masks):
            return None
        return [Encoded(i, [t if m else IGNORE for t, m in zip(i, mask)]) for i, mask in zip(ids, masks)]

    # ---- the three row kinds

    def _text(self, text: str) -> Encoded:
        ids = self.tok(text=self._with_eos(text))["input_ids"]
        return Encoded(list(ids), list(ids))

    def _prompt_completion(self, prompt: str, completion: str) -> Encoded:
        prompt_ids = self.tok(text=prompt)["input_ids"]
        ids = list(self.tok(text=self._with_eos(prompt + completion))["input_ids"])
        if self.train_on == "all":
            return Encoded(ids, list(ids))
        # The completion starts where the two tokenisations diverge (a merge across the boundary may move it).
        start = _common_prefix(prompt_ids, ids)
        return Encoded(ids, [IGNORE] * start + ids[start:])

    def _messages(self, messages: list[dict]) -> Encoded:
        if self.mask_mode == "all":
            out = self.tok.apply_chat_template(messages, tokenize=True, return_dict=True)
            ids = list(out["input_ids"])
            return Encoded(ids, list(ids))
        if self.mask_mode == "markers":
            out = self.tok.apply_chat_template(messages, tokenize=True, return_dict=True,
                                               return_assistant_tokens_mask=True, chat_template=self.mask_template)
            ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
            if self.mask_template != self.tok.chat_template:
                # trl's training variant renders the same text; the ids must be those of the saved template
                plain = list(self.tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
                if plain != ids:
                    raise EncodeError("trl's training variant of the tokenizer's chat template renders this "
                                      "conversation differently from the template itself; set trainer.train_on=all "
                                      "or give a Jinja template with {% generation %} markers")
        else:
            ids, mask = self._prefix_masks(messages)
        if 1 not in mask:
            raise EncodeError(f"the {self.template_name} template marks no assistant tokens in this conversation, so "
                              "nothing would be trained")
        return Encoded(ids, [t if m else IGNORE for t, m in zip(ids, mask)])

    # ---- helpers

    def _with_eos(self, text: str) -> str:
        eos = self.tok.eos_token
        if self.add_eos_token and eos and not text.endswith(eos):
            return text + eos
        return text

    def _renders_messages(self) -> bool:
        return self.fmt in ("messages", "alpaca", "prompt_completion")

    def _masking_template(self) -> tuple[Optional[str], str]:
        own = self.tok.chat_template
        if has_generation_markers(own):
            return own, "markers"
        try:
            from trl.chat_template_utils import get_training_chat_template

            patched = get_training_chat_template(self.tok)
        except Exception:  # trl does not know this template (or cannot read it): locate replies by prefix
            patched = None
        if patched:
            return patched, "markers"
        return None, "prefix"

    def _prefix_masks(self, messages: list[dict]) -> tuple[list[int], list[int]]:
        """Assistant spans of a template without markers: the text each assistant turn adds to the conversation
        rendered up to the turn before it (with the generation prompt)."""
        render = self.tok.apply_chat_template
        full = render(messages, tokenize=False)
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = render(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
            upto = render(messages[:i + 1], tokenize=False)
            if not upto.startswith(before) or not full.startswith(upto):
                raise EncodeError(
                    f"the {self.template_name} chat template renders earlier turns differently depending on what "
                    "follows, so the assistant replies cannot be located; use a template with {% generation %} "
                    "markers (chatml, zephyr, alpaca or a Jinja file) or set trainer.train_on=all")
            spans.append((len(before), len(upto)))
        if not getattr(self.tok, "is_fast", False):
            raise EncodeError("locating assistant replies without {% generation %} markers needs a fast tokenizer; "
                              "use chatml, zephyr, alpaca or a Jinja file with markers, or trainer.train_on=all")
        out = self.tok(full, add_special_tokens=False, return_offsets_mapping=True)
        mask = [int(any(a <= start < b for a, b in spans)) for start, _ in out["offset_mapping"]]
        return list(out["input_ids"]), mask


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


# ---- preference rows: lengths only (the dpo/orpo/reward trainers tokenise through trl; these are the counts
# `prepare` and their logs report)

@dataclass
class PreferenceLengths:
    prompt: int
    chosen: int
    rejected: int


def preference_lengths(row: dict, tokenizer, chat: bool) -> PreferenceLengths:
    """Token lengths of a preference row's prompt and of each answer after it, rendered as trl renders them:
    with a chat template the prompt gets the generation prompt and each answer is what the assistant turn adds."""
    prompt = row.get("prompt")
    if chat:
        prompt_msgs = _as_messages(prompt, "user") if prompt is not None else []
        prompt_ids = (tokenizer.apply_chat_template(prompt_msgs, tokenize=True, return_dict=True,
                                                    add_generation_prompt=True)["input_ids"] if prompt_msgs else [])
        answers = []
        for key in ("chosen", "rejected"):
            conversation = prompt_msgs + _as_messages(row[key], "assistant")
            ids = tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=True)["input_ids"]
            answers.append(len(ids) - _common_prefix(list(prompt_ids), list(ids)))
        return PreferenceLengths(len(prompt_ids), *answers)
    prompt_len = len(tokenizer(text=prompt)["input_ids"]) if prompt is not None else 0
    chosen, rejected = (len(tokenizer(text=_plain(row[k]))["input_ids"]) for k in ("chosen", "rejected"))
    return PreferenceLengths(prompt_len, chosen, rejected)


def _as_messages(value, role: str) -> list[dict]:
    return value if isinstance(value, list) else [{"role": role, "content": value}]


def _plain(value) -> str:
    return value if isinstance(value, str) else "\n".join(m["content"] for m in value)


# ---- preference pairs: the dpo/orpo length limits (trl 1.16 only knows one max_length for the whole sequence)

def prompt_cap(cfg) -> int:
    """Longest prompt a dpo/orpo pair keeps: max_prompt_length, always leaving room for an answer token."""
    return min(cfg.data.max_prompt_length, cfg.data.block_size - 1)


def cut_preference_pair(prompt: list[int], answer: list[int], cfg, bos_id: Optional[int]) -> tuple[list[int], list[int]]:
    """A prompt and one answer (token ids) within the dpo/orpo limits. trl 1.16 only knows one max_length for
    the whole sequence, so the limits are ours: the prompt keeps its END (the question next to the answer; a
    leading bos stays), at most data.max_prompt_length tokens and always leaving room for an answer token; the
    answer keeps its START, at most data.max_completion_length (null: what block_size leaves after the prompt);
    together they never exceed block_size."""
    d = cfg.data
    keep = prompt_cap(cfg)
    if len(prompt) > keep:
        head = prompt[:1] if bos_id is not None and prompt[:1] == [bos_id] else []
        prompt = head + prompt[len(prompt) - (keep - len(head)):]
    room = d.block_size - len(prompt)
    return prompt, answer[:min(d.max_completion_length or room, room)]
