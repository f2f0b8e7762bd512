"""`tunelaunch compare RUN_A RUN_B [...] --prompts FILE`: every prompt answered by every run, one block per prompt
with each run's answer under its name. Each run is prompted as `generate` prompts it (its own training template,
greedy decoding), so two answers differ by what the runs learned, not by how they were asked.

The prompts file is read and checked against every run's tokenizer before any weights load (loading takes seconds
to minutes per run): a bad line is refused at once, naming it. The runs are then loaded one at a time, so the
memory needed is one model's, whatever their number. Only the standard library is imported at the top: building
the command line's parser stays fast."""
from __future__ import annotations

import shutil
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

EXIT_INPUT = 2  # as the CLI's other refusals of a bad input (launcher.cli.EXIT_CONFIG)
JSONL_SUFFIXES = (".jsonl", ".json")
PROMPTS_SHAPE = ('a text file with one prompt per line, or a .jsonl file with one object per line (a .json file: '
                 'a JSON array of them): {"prompt": "..."} or {"messages": [{"role": "user", "content": "..."}]}')


class CompareInputError(ValueError):
    """A prompts file or a target that cannot be compared; the message names it and says the fix."""


@dataclass
class Prompt:
    where: str
    """Where it is in the prompts file ("line 3" of a text or .jsonl file, "item 3" of a .json array), 1-based."""
    file: str = ""
    text: str | None = None
    """A plain prompt: the user turn for a run trained with a chat template (as `generate --prompt`), the text
    itself for one trained on raw text."""
    messages: list[dict] | None = None
    """A conversation ending with the turn to answer (runs with a chat template only)."""

    def shown(self) -> str:
        if self.messages is None:
            return self.text
        return "\n".join(f"{m['role']}: {m.get('content') or ''}" for m in self.messages)


def read_prompts(path: str | Path) -> list[Prompt]:
    """The prompts of a --prompts file: a .jsonl file holds one JSON object per line, a .json file a JSON array of
    them (as samples/prompts/train.json) or one per line, any other file one plain prompt per line; blank lines
    are skipped. CompareInputError names the first bad line (or item)."""
    import json

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise CompareInputError(f"--prompts {path}: cannot read it ({err.strerror or err}); it should be "
                                f"{PROMPTS_SHAPE}") from None
    except UnicodeDecodeError as err:
        raise CompareInputError(f"--prompts {path}: not UTF-8 text ({err})") from None
    suffix = path.suffix.lower()
    rows: list[tuple[str, object]] = []  # (where, a parsed JSON row, or the line of a text file)
    array = None
    if suffix == ".json":
        try:
            array = json.loads(text)
        except ValueError:
            pass  # not one JSON document: read it as JSON lines
    if isinstance(array, list):
        rows = [(f"item {i}", row) for i, row in enumerate(array, 1)]
    else:
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                rows.append((f"line {number}", _json_line(path, number, line) if suffix in JSONL_SUFFIXES
                             else line.strip()))
    prompts = [Prompt(where, str(path), text=row) if isinstance(row, str) and suffix not in JSONL_SUFFIXES
               else _json_prompt(path, where, row) for where, row in rows]
    if not prompts:
        raise CompareInputError(f"--prompts {path}: no prompts in it; it should be {PROMPTS_SHAPE}")
    return prompts


def _json_line(path: Path, number: int, line: str):
    import json

    try:
        return json.loads(line)
    except ValueError as err:
        raise CompareInputError(f"--prompts {path} line {number}: not JSON ({err}); each line of a {path.suffix} "
                                'file is one object like {"prompt": "..."} (a file of plain prompts, one per line, '
                                f"should not end in {path.suffix})") from None


def _json_prompt(path: Path, where: str, row) -> Prompt:
    from launcher.data.formats import RowError, parse_messages

    at = f"--prompts {path} {where}"
    keys = sorted({"prompt", "messages"} & set(row)) if isinstance(row, dict) else []
    if len(keys) != 1:
        raise CompareInputError(f"{at}: expected an object with either \"prompt\" or \"messages\", got "
                                f"{str(row)[:80]}")
    if keys == ["prompt"]:
        if not isinstance(row["prompt"], str) or not row["prompt"].strip():
            raise CompareInputError(f"{at}: \"prompt\" must be a non-empty string")
        return Prompt(where, str(path), text=row["prompt"])
    try:
        messages = parse_messages(row["messages"], need_assistant=False)
    except RowError as err:
        raise CompareInputError(f"{at}: {err}") from None
    if messages[-1]["role"] not in ("user", "tool"):
        raise CompareInputError(f"{at}: the last turn is the {messages[-1]['role']}'s, so there is nothing to "
                                "answer: end the conversation with the user turn the runs should reply to")
    return Prompt(where, str(path), messages=messages)


def check_targets(targets: list[str], prompts: list[Prompt], template: str | None) -> None:
    """Each target is a run folder (with a model or a complete checkpoint) or a model folder, and its template
    renders every conversation; read from the tokenizers alone, before any weights load."""
    for target in targets:  # the folders first: a mistyped path is refused before torch is imported
        folder = Path(target)
        if not ((folder / "config.yaml").is_file() or (folder / "config.json").is_file()):
            raise CompareInputError(f"{target} is neither a run folder (with config.yaml) nor a model folder (with "
                                    "config.json)")
    from launcher import generate
    from launcher.prompt_inputs import PromptInputError, check_renders

    for target in targets:
        try:
            tokenizer, chat = generate.load_tokenizer(target, template)
        except FileNotFoundError as err:
            raise CompareInputError(str(err)) from None  # it names the target
        for prompt in prompts:
            if prompt.messages is None:
                continue
            if not chat:
                raise CompareInputError(f"--prompts {prompt.file} {prompt.where}: a conversation, but {target} was "
                                        "trained without a chat template (on raw text): give it as "
                                        '{"prompt": "..."}')
            try:
                check_renders(tokenizer, prompt.messages, f"--prompts {prompt.file} {prompt.where} ({target})")
            except PromptInputError as err:
                raise CompareInputError(str(err)) from None


def answer_all(targets: list[str], prompts: list[Prompt], max_new_tokens: int, template: str | None,
               progress=None) -> list[tuple[str, list[str]]]:
    """[(target, its greedy answer to each prompt)] in the order given, loading one target at a time."""
    import gc

    from launcher import generate

    answers = []
    for target in targets:
        gen = generate.load(target, template)
        answers.append((target, [gen.complete(messages=p.messages, text=p.text, max_new_tokens=max_new_tokens)
                                 for p in prompts]))
        del gen
        gc.collect()  # one model in memory at a time
        if progress:
            progress(f"{target}: {len(prompts)} answers")
    return answers


def render(prompts: list[Prompt], answers: list[tuple[str, list[str]]], width: int = 100) -> str:
    """One block per prompt: a rule with its number, the prompt, then each run's answer under its name, wrapped
    to `width` columns (a long line stays readable in a terminal; the answer's own line breaks are kept)."""
    blocks = []
    for i, prompt in enumerate(prompts):
        title = f"── prompt {i + 1}/{len(prompts)} ({prompt.where}) "
        lines = [title + "─" * max(0, width - len(title)), _wrap(prompt.shown(), width, "")]
        for target, replies in answers:
            lines += ["", f"[{target}]", _wrap(replies[i] or "(empty answer)", width, "  ")]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _wrap(text: str, width: int, indent: str) -> str:
    return "\n".join(textwrap.fill(line, width, initial_indent=indent, subsequent_indent=indent,
                                   replace_whitespace=False) if line.strip() else ""
                     for line in text.splitlines() or [""])


def add_arguments(parser) -> None:
    parser.add_argument("targets", nargs="+", metavar="RUN",
                        help="two or more run folders (each prompted with its training template) or model folders")
    parser.add_argument("--prompts", required=True, metavar="FILE", help=PROMPTS_SHAPE)
    parser.add_argument("--max-new-tokens", type=int, default=128, help="longest answer in tokens (default 128)")
    parser.add_argument("--template", default=None,
                        help="the chat template for targets that are plain model folders (default: the tokenizer's "
                             "own, else plain text); a run folder is always prompted with its training template")


def main(args) -> int:
    if len(args.targets) < 2:
        print(f"compare needs two or more runs, got {args.targets[0]}; to prompt one run, use "
              f"`tunelaunch generate {args.targets[0]} --prompt ...`", file=sys.stderr)
        return EXIT_INPUT
    if args.max_new_tokens < 1:
        print(f"--max-new-tokens {args.max_new_tokens}: give 1 or more", file=sys.stderr)
        return EXIT_INPUT
    try:
        prompts = read_prompts(args.prompts)  # first: a bad file is refused before even torch is imported
        check_targets(args.targets, prompts, args.template)
    except CompareInputError as err:
        print(err, file=sys.stderr)
        return EXIT_INPUT
    from launcher.console import hide_model_file_bars

    hide_model_file_bars()
    answers = answer_all(args.targets, prompts, args.max_new_tokens, args.template,
                         progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(render(prompts, answers, width=min(shutil.get_terminal_size((100, 24)).columns, 100)))
    return 0
