"""`tunelaunch chat`: a multi-turn conversation with a trained run (or a model folder), each turn prompted
with the whole conversation rendered by the run's training template, the reply streamed as it is generated.

Lines are read from stdin, so a conversation can be typed or piped. On a terminal the prompt `you> ` is shown and
notes go to stderr; piped, stdout holds the replies only, one after the other, each ending with a newline.
Runs trained without a chat template (`chat_template: none`) hold one running text instead: the system message,
then every line typed and every reply, joined by newlines, which the model continues.

--tools FILE puts the functions' schemas into every prompt as training rendered a row's tools. A reply's reasoning
(a `<think>` block it starts with) is hidden unless --show-reasoning, and is not kept in the conversation: each
earlier reply is given back to the model without its reasoning.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, TextIO

from jinja2 import TemplateError
from transformers import TextStreamer

from launcher.data.reasoning import CLOSE, OPEN, split_reasoning
from launcher.generate import Generator
from launcher.prompt_inputs import PromptInputError, check_renders, read_tools_file

PROMPT = "you> "
HELP = """commands:
  /reset        start the conversation over (the system message stays)
  /system TEXT  set the system message and start over (/system alone removes it)
  /exit         quit (ctrl-D too); ctrl-C stops a reply that is being written, and that exchange is dropped
  /help         this list
"""


class ContextFull(ValueError):
    """The message alone does not fit in the model's context."""


@dataclass
class Conversation:
    gen: Generator
    system: Optional[str] = None
    turns: list[dict] = field(default_factory=list)
    """The exchanges so far: user and assistant messages, alternating."""
    tools: Optional[list[dict]] = None
    """The functions' JSON schemas rendered into every prompt (a --tools file)."""
    show_reasoning: bool = False
    """Whether a reply's `<think>` block is shown as it is written."""

    def reset(self) -> None:
        self.turns.clear()

    def prompt_ids(self, user: str) -> list[int]:
        """The ids the model is given for this next message: the conversation so far and the message, rendered
        as training rendered it, with the template's generation prompt."""
        turns = [*self.turns, {"role": "user", "content": user}]
        if self.gen.chat:
            system = [{"role": "system", "content": self.system}] if self.system else []
            return self.gen.prompt_ids(messages=system + turns, tools=self.tools)
        lines = ([self.system] if self.system else []) + [t["content"] for t in turns]
        return self.gen.prompt_ids(text="\n".join(lines))

    def fitted_prompt(self, user: str, max_new_tokens: int) -> tuple[list[int], int]:
        """The prompt ids with room for the reply in the model's context, and how many of the oldest
        exchanges were dropped to make that room."""
        limit = getattr(self.gen.model.config, "max_position_embeddings", None)
        dropped = 0
        while True:
            ids = self.prompt_ids(user)
            if limit is None or len(ids) + max_new_tokens <= limit:
                return ids, dropped
            if not self.turns:
                raise ContextFull(f"this message ({len(ids)} tokens) and a reply of --max-new-tokens "
                                  f"{max_new_tokens} do not fit in the model's context of {limit} tokens")
            del self.turns[:2]
            dropped += 1

    def answer(self, user: str, prompt_ids: list[int], out: TextIO, max_new_tokens: int,
               temperature: float) -> str:
        """Answer a message (given as its `fitted_prompt`), streaming the reply to `out`; the exchange joins the
        conversation once the reply is complete, so a reply stopped by ctrl-C leaves the conversation as it was."""
        echo = Echo(self.gen.tokenizer, out, hide_reasoning=not self.show_reasoning)
        reply = split_reasoning(self.gen.reply(prompt_ids, max_new_tokens, temperature, streamer=echo))[1]
        self.turns += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
        return reply


class Echo(TextStreamer):
    """Writes the reply to `out` as it is generated, without the prompt, the special tokens or the whitespace
    around the reply, so what is shown is exactly the reply the conversation keeps, then a newline.
    hide_reasoning: a `<think>` block the reply starts with is not written (held until its `</think>`)."""

    def __init__(self, tokenizer, out: TextIO, hide_reasoning: bool = False):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.out, self.held, self.started = out, "", False
        self.thinking = "" if hide_reasoning else None
        """The reply so far while it may still be reasoning; None once the reply itself is being written."""

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if self.thinking is not None:
            self.thinking += text
            head = self.thinking.lstrip()
            if CLOSE in head:
                text, self.thinking = head.partition(CLOSE)[2], None
            elif head.startswith(OPEN) or (OPEN.startswith(head) and not stream_end):
                if stream_end:  # the reply ran out while reasoning: an empty reply, still ended by its newline
                    self.out.write("\n")
                    self.out.flush()
                return  # reasoning (or what may yet become its opening tag): not shown
            else:
                text, self.thinking = self.thinking, None
        text = self.held + text
        body = text.rstrip()
        self.held = text[len(body):]  # trailing whitespace waits until more text follows it
        if not self.started:
            body = body.lstrip()
            self.started = bool(body)
        self.out.write(body + ("\n" if stream_end else ""))
        self.out.flush()


def converse(conv: Conversation, read: Callable[[], Optional[str]], out: TextIO, err: TextIO,
             max_new_tokens: int = 256, temperature: float = 0.0, show_prompt: bool = False) -> int:
    """The chat loop: read a line (None or EOFError at the end), run a command or answer it."""
    while True:
        try:
            line = read()
        except (EOFError, KeyboardInterrupt):
            line = None
        if line is None:
            return 0
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            command, _, rest = line.partition(" ")
            if command == "/exit":
                return 0
            if command == "/reset":
                conv.reset()
                err.write("(conversation cleared)\n")
            elif command == "/system":
                conv.system = rest.strip() or None
                conv.reset()
                err.write(f"(system message {'set' if conv.system else 'removed'}; conversation cleared)\n")
            else:
                err.write(HELP)
            continue
        try:
            ids, dropped = conv.fitted_prompt(line, max_new_tokens)
        except ContextFull as error:
            err.write(f"({error}: shorten the message or lower --max-new-tokens)\n")
            continue
        except (TemplateError, ValueError) as error:  # e.g. a template that refuses system messages
            err.write(f"(the chat template cannot render this conversation: {error})\n")
            continue
        if dropped:
            err.write(f"(the {dropped} oldest exchange(s) were dropped to fit the model's context)\n")
        if show_prompt:
            err.write(f"--- prompt ({len(ids)} tokens) ---\n{conv.gen.tokenizer.decode(ids)}\n--- reply ---\n")
        err.flush()
        try:
            conv.answer(line, ids, out, max_new_tokens, temperature)
        except KeyboardInterrupt:
            out.write("\n")
            err.write("(reply stopped; that exchange is not kept)\n")


def main(target: str, template: Optional[str] = None, system: Optional[str] = None, max_new_tokens: int = 256,
         temperature: float = 0.0, show_prompt: bool = False, tools_file: Optional[str] = None,
         show_reasoning: bool = False) -> int:
    from launcher import generate
    from launcher.config.errors import EXIT_CONFIG

    if max_new_tokens < 1 or temperature < 0:
        print("--max-new-tokens must be at least 1 and --temperature at least 0 (0: greedy)", file=sys.stderr)
        return EXIT_CONFIG
    if template is not None and (Path(target) / "config.yaml").is_file():
        print(f"--template is for a plain model folder; {target} is a run and is prompted with its training "
              "template", file=sys.stderr)
        return EXIT_CONFIG
    try:
        tools = read_tools_file(tools_file) if tools_file else None
        if system or tools:
            _check_system(target, template, system, tools)
        gen = generate.load(target, template)
    except (FileNotFoundError, PromptInputError) as error:
        print(error, file=sys.stderr)
        return EXIT_CONFIG
    if gen.source is not None and gen.source != Path(target):
        print(f"({target} has no final model yet: talking to its {gen.source.name})", file=sys.stderr)
    interactive = sys.stdin.isatty()
    if interactive:
        import readline  # noqa: F401  line editing and history for input()

        kind = "its chat template" if gen.chat else "plain text (no chat template)"
        print(f"Chatting with {target}, prompted with {kind}. /help lists the commands; ctrl-D quits.",
              file=sys.stderr)
        read = _terminal_line
    else:
        read = lambda: sys.stdin.readline() or None  # noqa: E731
    return converse(Conversation(gen, system, tools=tools, show_reasoning=show_reasoning), read, sys.stdout,
                    sys.stderr, max_new_tokens, temperature, show_prompt)


def _check_system(target: str, template: Optional[str], system: Optional[str],
                  tools: Optional[list[dict]] = None) -> None:
    """--system must be a message the run's chat template renders (some refuse a system turn), and --tools tools
    it renders: said now, not at every line typed once the model has loaded."""
    from launcher.generate import load_tokenizer

    tokenizer, chat = load_tokenizer(target, template)
    if not chat:
        if tools:
            raise PromptInputError(f"--tools: {target} is prompted with plain text (no chat template), which has no "
                                   "place for tools")
        return
    opening = [{"role": "system", "content": system}] if system else []
    what = " with ".join(option for option, given in (("--system", system), ("--tools", tools)) if given)
    check_renders(tokenizer, [*opening, {"role": "user", "content": "Hello"}], what, tools)


def _terminal_line() -> Optional[str]:
    try:
        return input(PROMPT)
    except (EOFError, KeyboardInterrupt):  # ctrl-D or ctrl-C at the prompt: quit on a fresh line
        print()
        return None
