"""Row formats: detect which one a dataset is in, check its rows, and normalise it to the canonical columns
the trainers take (`text`, `messages`, `prompt`/`completion`, `prompt`/`chosen`/`rejected`, and for unpaired
preference data `prompt`/`completion`/`label`).

Each format is one row of `FORMATS`, and the row carries everything the rest of the launcher asks of the format:
its columns, how its rows are read and checked (`normalise`), what its trainer takes (`sft_sample`, `trl_row`),
the conversations a chat template renders of it (`conversations`), the template it needs under
data.chat_template=none, which part of it is trained (`trained_part`), and the flags other modules branch on
(`chat`, `unpaired`, `answers`). A new format is a new row here (and its tests), not a branch in every module
that reads data.
"""
from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

from launcher.config.schema import DataConfig, RunConfig
from launcher.data.templates import alpaca_messages
from launcher.methods import METHODS

ROLES = ("system", "user", "assistant", "tool")
# A `tool` turn holds a tool's result (what the model's tool call returned); it is shown to the model, never trained.
# ShareGPT rows hold the conversation in a `conversations` column, each turn {from, value} (or {role, content}).
SHAREGPT_COLUMN = "conversations"
# The roles ShareGPT's speaker names play. ShareGPT's tool output (tool, observation) answers no structured call
# (ShareGPT has no tool_calls), so it is shown to the model as a user turn and never trained, as every template
# renders a user turn; the model's tool call (function_call) is its own reply. data.column_mapping.roles adds or
# overrides names. (Tool-calling chats in OpenAI's shape, {role: tool} turns after tool_calls, are read as such.)
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "tool": "user", "observation": "user",
                  "function_call": "assistant"}
# What data.chat_template=none does to a format's rows (Format.under_none): read as plain text, or refused
# (chat messages have no plain-text form); any other value names the template they are rendered with instead.
PLAIN, REFUSED = "plain", "refused"


@dataclass(frozen=True)
class Format:
    name: str
    columns: tuple[str, ...]
    """Canonical columns every row must have."""
    read: Callable[..., dict]
    """(row, format, label column, roles) -> the row in canonical columns, or RowError (see `normalise`)."""
    shape: Callable[[dict, bool], dict]
    """(canonical row, as conversations?) -> the row as its trainer takes it (see `sft_sample`, `trl_row`)."""
    talks: Callable[[dict], list]
    """Canonical row -> the message lists a chat template renders of it (see `conversations`)."""
    trained: Callable[[RunConfig], str]
    """Run config -> what the loss is on when trainer.train_on is completion (see `trained_part`)."""
    chat: bool = False
    """Rows the sft and default trainers read as one chat conversation under a chat template (messages, alpaca,
    prompt_completion); the others are read as they are."""
    unpaired: bool = False
    """Single completions, each labelled desirable or undesirable (kto)."""
    answers: bool = False
    """Rows that hold answers to learn from, not prompts to sample: given to an online method they are refused
    (naming the format and its trainers) rather than read as prompts with extra columns."""
    under_none: str = PLAIN
    """With data.chat_template=none: PLAIN (read as text), REFUSED (the preflight asks for a template), or the
    name of the template the rows are rendered with instead (Alpaca rows: `alpaca`)."""
    mixes_as: Optional[str] = None
    """The format rows of this one become in a mixture of different formats (data.datasets), where they can mix:
    chat rows become `messages` (sft and default, under a chat template), unpaired rows `unpaired_messages`."""

    @property
    def trainers(self) -> tuple[str, ...]:
        """Trainers that take this format (the methods table says)."""
        return tuple(m.name for m in METHODS.values() if self.name in m.formats)

    def sft_sample(self, row: dict, chat: bool) -> dict:
        """A canonical row as the sft (and default) trainer takes it: `text`, `messages`, or `prompt`/`completion`;
        with `chat` (a chat template is set) prompt/completion rows become a conversation. Alpaca rows are always
        messages (under `none` the alpaca template renders them)."""
        return self.shape(row, chat)

    def trl_row(self, row: dict, conversational: bool) -> dict:
        """A canonical row as trl's trainer of this format takes it: preference pairs (`prompt`, `chosen`,
        `rejected`), unpaired rows (`prompt`, `completion`, `label`), prompts (`prompt` and the reward functions'
        columns). Conversational, strings become message lists: a prompt the user turn, an answer the assistant
        turn (the conversations `conversations` renders at preflight)."""
        return self.shape(row, conversational)

    def conversations(self, row: dict) -> list[list[dict]]:
        """The message lists a chat template renders for one canonical row: two for preference pairs (chosen,
        rejected), none for plain text."""
        return self.talks(row)

    def trained_part(self, cfg: RunConfig) -> str:
        """What the loss is on, in words (as `tunelaunch prepare` prints it)."""
        return "every token" if cfg.trainer.train_on == "all" else self.trained(cfg)

    def template(self, chat_template: str) -> str:
        """The template rows of this format are rendered with when the run's is `chat_template`."""
        if chat_template == "none" and self.under_none not in (PLAIN, REFUSED):
            return self.under_none
        return chat_template


# ---- row shaping: a canonical row -> what its trainer takes, and the conversations a template renders

def _as_is(row: dict, chat: bool) -> dict:
    return row


def _alpaca_sample(row: dict, chat: bool) -> dict:
    return {"messages": alpaca_messages(row["instruction"], row["input"], row["output"])}


def _prompt_completion_sample(row: dict, chat: bool) -> dict:
    if not chat:
        return row
    return {"messages": [{"role": "user", "content": row["prompt"]},
                         {"role": "assistant", "content": row["completion"]}]}


def _pair_row(row: dict, conversational: bool) -> dict:
    """`prompt` (when the row has one), `chosen`, `rejected`: strings, or conversational, message lists."""
    keys = [k for k in ("prompt", "chosen", "rejected") if row.get(k) is not None]
    if not conversational:
        return {k: row[k] for k in keys}
    role = {"prompt": "user", "chosen": "assistant", "rejected": "assistant"}
    return {k: _turns(row[k], role[k]) for k in keys}


def _prompt_row(row: dict, conversational: bool) -> dict:
    """`prompt` as text or, conversational, as a message list (a string becomes the user turn, as `tunelaunch
    generate` renders it); the other columns as they are, for the reward functions."""
    if not conversational:
        return dict(row)
    return {**row, "prompt": _turns(row["prompt"], "user")}


def _unpaired_row(row: dict, conversational: bool) -> dict:
    """`prompt`, `completion` and a boolean `label`; conversational, a string prompt becomes the user turn and a
    string completion the assistant turn."""
    if not conversational:
        return dict(row)
    return {"prompt": _turns(row["prompt"], "user"), "completion": _turns(row["completion"], "assistant"),
            "label": row["label"]}


def _turns(value, role: str) -> list[dict]:
    """A message list as it is, a string as one message of `role`."""
    return value if isinstance(value, list) else [{"role": role, "content": value}]


def _pair_conversations(row: dict) -> list[list[dict]]:
    prompt = row.get("prompt")
    prompt_msgs = [] if prompt is None else _turns(prompt, "user")
    return [prompt_msgs + _turns(row[k], "assistant") for k in ("chosen", "rejected")]


def _prompt_conversation(row: dict) -> list[list[dict]]:
    return [_turns(row["prompt"], "user")]


def _unpaired_conversation(row: dict) -> list[list[dict]]:
    sample = _unpaired_row(row, conversational=True)
    return [sample["prompt"] + sample["completion"]]


def _chat_conversation(shape: Callable[[dict, bool], dict]) -> Callable[[dict], list]:
    """An sft row's conversation: its sample under a chat template."""
    return lambda row: [shape(row, True)["messages"]]


def _no_conversation(row: dict) -> list[list[dict]]:
    return []  # plain text goes through no template


# ---- the trained part (trainer.train_on=completion)

def _replies(cfg: RunConfig) -> str:
    return "the assistant replies, each with the end-of-turn token that closes it"


def _whole_text(cfg: RunConfig) -> str:
    return "every token" + (" (the eos token appended)" if cfg.data.add_eos_token else "")


def _completion_or_replies(cfg: RunConfig) -> str:
    if cfg.data.chat_template != "none":
        return _replies(cfg)
    return "the completion" + (" and the eos token after it" if cfg.data.add_eos_token else "")


# ---- reading: a raw row (columns renamed) -> the canonical row, or a RowError naming what is wrong

def _read_messages(row: dict, fmt: Format, label_column: str, roles: Mapping[str, str]) -> dict:
    value = row.get("messages", row.get("text"))  # (a text column may hold the message lists)
    messages = parse_messages(value, roles=roles)
    tools = parse_tools(row.get("tools"))
    if tools is None:
        return {"messages": messages}
    problems = check_tool_conversation(messages, tools)
    if problems:
        raise RowError(problems[0])
    return {"messages": messages, "tools": tools}


def _read_alpaca(row: dict, fmt: Format, label_column: str, roles: Mapping[str, str]) -> dict:
    return {"instruction": _text(row, "instruction", fmt), "input": row.get("input") or "",
            "output": _text(row, "output", fmt)}


def _read_prompt(row: dict, fmt: Format, label_column: str, roles: Mapping[str, str]) -> dict:
    """An online method's prompt: text, or a conversation ending with the user turn the model answers; the other
    columns go along to the reward functions."""
    value = row.get("prompt")
    if not _is_messages(value):
        return {**row, "prompt": _text(row, "prompt", fmt)}
    messages = parse_messages(value, need_assistant=False, roles=roles)
    if messages[-1]["role"] != "user":
        raise RowError(f"prompt: the last turn must be the user turn the model answers, got {messages[-1]['role']!r} "
                       "(leave the answer out: the model samples it)")
    return {**row, "prompt": messages}


def _read_unpaired_messages(row: dict, fmt: Format, label_column: str, roles: Mapping[str, str]) -> dict:
    return {**_split_conversation(parse_messages(row.get("messages"), roles=roles)),
            "label": parse_label(row.get("label"), label_column)}


def _read_texts(row: dict, fmt: Format, label_column: str, roles: Mapping[str, str]) -> dict:
    """Every column text (a label column a label)."""
    return {col: parse_label(row.get(col), label_column) if col == "label" else _text(row, col, fmt)
            for col in fmt.columns}


def _read_answers(row: dict, fmt: Format, label_column: str, roles: Mapping[str, str]) -> dict:
    """Every column text or a message list (an answer's needs an assistant turn), a label column a label."""
    out = {}
    for col in fmt.columns:
        value = row.get(col)
        if col == "label":
            out[col] = parse_label(value, label_column)
        elif _is_messages(value):
            try:
                out[col] = parse_messages(value, need_assistant=col != "prompt", roles=roles)
            except RowError as err:
                raise RowError(f"{col}: {err}") from None
        else:
            out[col] = _text(row, col, fmt)
    return out


_PAIR = dict(read=_read_answers, shape=_pair_row, talks=_pair_conversations, trained=_replies, answers=True)
_UNPAIRED = dict(shape=_unpaired_row, talks=_unpaired_conversation, trained=_replies, unpaired=True, answers=True,
                 mixes_as="unpaired_messages")
_CHAT = dict(chat=True, mixes_as="messages")

# Detection tries these in order: the first whose columns are all present wins, a format the trainer takes
# before one it does not.
FORMATS = (
    Format("preference", ("prompt", "chosen", "rejected"), **_PAIR),
    Format("reward_pair", ("chosen", "rejected"), **_PAIR),
    Format("alpaca", ("instruction", "output"), _read_alpaca, _alpaca_sample, _chat_conversation(_alpaca_sample),
           _replies, under_none="alpaca", **_CHAT),
    Format("unpaired", ("prompt", "completion", "label"), _read_answers, **_UNPAIRED),
    Format("prompt_completion", ("prompt", "completion"), _read_texts, _prompt_completion_sample,
           _chat_conversation(_prompt_completion_sample), _completion_or_replies, **_CHAT),
    Format("unpaired_messages", ("messages", "label"), _read_unpaired_messages, **_UNPAIRED),
    Format("messages", ("messages",), _read_messages, _as_is, _chat_conversation(_as_is), _replies,
           under_none=REFUSED, **_CHAT),
    Format("text", ("text",), _read_texts, _as_is, _no_conversation, _whole_text),
    # The online methods' prompts: every other column goes along to the reward functions (e.g. a reference answer).
    Format("prompt_only", ("prompt",), _read_prompt, _prompt_row, _prompt_conversation, _replies),
)
BY_NAME = {f.name: f for f in FORMATS}
# AutoTrain names the preferred and rejected answers `text` and `rejected_text`.
PREFERENCE_ALIASES = {"text": "chosen", "rejected_text": "rejected"}


class RowError(ValueError):
    """A row that does not fit its format; the message names the row."""


def rename_map(cfg: DataConfig, trainer: str) -> dict[str, str]:
    """User column -> canonical column, from `column_mapping` (AutoTrain's text/rejected_text/prompt).

    For sft, a prompt column makes the text column the completion (prompt/completion rows); for unpaired
    preference data (kto) the text column is the completion."""
    cols = cfg.column_mapping
    preference = METHODS[trainer].pairs
    mapping = {}
    if preference:
        if cols.text_column != "text" or cols.rejected_text_column:
            mapping[cols.text_column] = "chosen"
    elif METHODS[trainer].online:
        pass  # a prompt column (prompt_text_column, below) and whatever columns the rewards read
    elif any(BY_NAME[n].unpaired for n in METHODS[trainer].formats):
        if cols.text_column != "text" or cols.prompt_text_column:
            mapping[cols.text_column] = "completion"
    elif cols.prompt_text_column:
        mapping[cols.text_column] = "completion"
    elif cols.text_column != "text":
        mapping[cols.text_column] = "text"
    if cols.rejected_text_column:
        mapping[cols.rejected_text_column] = "rejected"
    if cols.prompt_text_column:
        mapping[cols.prompt_text_column] = "prompt"
    if cols.label_column:
        mapping[cols.label_column] = "label"
    return mapping


def apply_aliases(columns: list[str], trainer: str) -> dict[str, str]:
    """Renames that make ShareGPT's `conversations` column and AutoTrain's preference columns (text,
    rejected_text) canonical, when unambiguous."""
    aliases = {SHAREGPT_COLUMN: "messages"} if is_sharegpt(columns) else {}
    if not METHODS[trainer].pairs or "chosen" in columns or "rejected" in columns:
        return aliases
    if not set(PREFERENCE_ALIASES) <= set(columns):
        return aliases
    return {**aliases, **PREFERENCE_ALIASES}


def is_sharegpt(columns: list[str]) -> bool:
    """ShareGPT rows: a `conversations` column and no `messages` column it would clash with."""
    return SHAREGPT_COLUMN in columns and "messages" not in columns


def detect(columns: list[str], cfg: DataConfig, trainer: str, first_row: dict) -> Optional[Format]:
    """The format of data with these (already renamed) columns, or None when nothing fits."""
    if cfg.format != "auto":
        fmt = BY_NAME[cfg.format]
        if fmt.name == "messages" and "text" in columns:
            return fmt  # a text column holding the message lists
        return fmt if set(fmt.columns) <= set(columns) else None
    if "prompt_only" in METHODS[trainer].formats:
        answers = next((f for f in FORMATS if f.answers and set(f.columns) <= set(columns)), None)
        if answers is not None:
            return answers  # preference or labelled rows are not prompts: the caller says which trainer reads them
    # A format the trainer takes wins over an earlier one it does not (sft rows may carry a label column).
    for fmt in sorted(FORMATS, key=lambda f: trainer not in f.trainers):
        if fmt.name == "prompt_only" and trainer not in fmt.trainers:
            continue  # a lone prompt column is a half-written layout for the others: "no layout" says what they need
        if set(fmt.columns) <= set(columns):
            if fmt.name == "text" and _is_messages(first_row.get("text")):
                return BY_NAME["messages"]  # a text column holding chat messages (AutoTrain allows it)
            return fmt
    return None


def normalise(row: dict, fmt: Format, label_column: str = "label", roles: Mapping[str, str] = {}) -> dict:
    """One row in canonical columns; raises RowError when it does not fit (naming the label by the user's column).
    `roles` maps the data's speaker names to chat roles (data.column_mapping.roles)."""
    return fmt.read(row, fmt, label_column, roles)


def effective_template(cfg: RunConfig, fmt: Optional[str]) -> str:
    """The template rows are rendered with: data.chat_template, or the one their format needs under `none`
    (Alpaca rows get the alpaca template)."""
    known = BY_NAME.get(fmt or "")
    return known.template(cfg.data.chat_template) if known is not None else cfg.data.chat_template


def is_conversational(cfg: RunConfig, splits) -> bool:
    """Whether preference, unpaired or prompt rows go to trl as conversations: a chat template is set, or a value
    of some row is a message list."""
    return cfg.data.chat_template != "none" or any(
        isinstance(v, list) for s in splits if s is not None for r in s.rows for v in r.values())


def parse_messages(value, need_assistant: bool = True, roles: Mapping[str, str] = {}) -> list[dict]:
    """A list of {role, content}, or ShareGPT's {from, value}; a string holding one (chat data in a CSV cell) is
    accepted as JSON or as Python's repr (`[{'role': 'user', ...}]`, as AutoTrain's docs print it). Speaker
    names become roles through `roles`, then ShareGPT's names (human, gpt, ...).

    Tool-calling chats (OpenAI's shape): an assistant turn may carry `tool_calls`, each kept as
    {"type": "function", "function": {"name", "arguments"}} with the arguments as a dict (a JSON string is
    parsed), and a `tool` turn holds a call's result (`tool_call_id` and `name` optional). An assistant turn's
    `reasoning_content` (its reasoning trace) is kept as text."""
    if isinstance(value, str):
        value = _parse_list(value)
    if not isinstance(value, list) or not value:
        raise RowError(f"messages: expected a non-empty list of {{role, content}} or {{from, value}}, "
                       f"got {type(value).__name__}")
    messages = [_parse_turn(i, turn, roles) for i, turn in enumerate(value)]
    if need_assistant and not any(m["role"] == "assistant" for m in messages):
        raise RowError("messages: no assistant turn, so there is nothing to learn")
    problems = check_tool_conversation(messages)
    if problems:
        raise RowError(problems[0])
    return messages


def _parse_turn(i: int, turn, roles: Mapping[str, str]) -> dict:
    """One turn as {role, content} (plus tool_calls, reasoning_content, tool_call_id, name where the turn has
    them), from {role, content} or ShareGPT's {from, value}."""
    if type(turn) is dict and len(turn) == 2 and type(turn.get("content")) is str and not roles:
        role = turn.get("role")
        if role in ROLES:  # the common turn, {role, content} with a chat role and text: as the general path reads it
            return {"role": role, "content": turn["content"]}
    if isinstance(turn, dict) and "role" in turn and ("content" in turn or "tool_calls" in turn):
        speaker, content = turn["role"], turn.get("content")
        # ShareGPT's speaker names apply to {role, content} turns too, except `tool`: in this shape it is the
        # tool-result role itself (ShareGPT's {from: tool} turn, which has no call to answer, stays a user turn).
        sharegpt = {k: v for k, v in SHAREGPT_ROLES.items() if k != "tool"}
    elif isinstance(turn, dict) and "from" in turn and "value" in turn:
        speaker, content = turn["from"], turn["value"]
        sharegpt = SHAREGPT_ROLES
    else:
        raise RowError(f"messages[{i}]: expected {{role, content}} or ShareGPT's {{from, value}}, got {turn!r:.80}")
    if not isinstance(speaker, str):
        raise RowError(f"messages[{i}]: the role should be text, got {speaker!r:.60}")
    role = roles.get(speaker, sharegpt.get(speaker, speaker))
    if role not in ROLES:
        mapped = f" (data.column_mapping.roles maps {speaker!r} to it)" if speaker in roles else ""
        raise RowError(f"messages[{i}]: unknown role {role!r}{mapped}; use one of {', '.join(ROLES)}, or map the "
                       f"name to one, e.g. data.column_mapping.roles.{speaker}=assistant")
    out = {"role": role, "content": _content(content, role)}
    if turn.get("tool_calls") is not None:
        out["tool_calls"] = _parse_tool_calls(i, turn["tool_calls"])
    reasoning = turn.get("reasoning_content")
    if reasoning is not None:
        if not isinstance(reasoning, str):
            raise RowError(f"messages[{i}]: reasoning_content should be text, got {type(reasoning).__name__}")
        out["reasoning_content"] = reasoning
    if role == "tool":
        for key in ("tool_call_id", "name"):
            if turn.get(key) is not None:
                out[key] = str(turn[key])
    return out


def _content(content, role: str) -> str:
    """A turn's text. An assistant turn that only calls tools may have no content; a tool's result may be JSON
    (kept as JSON text, not Python's repr of it)."""
    if content is None:
        return ""
    if role == "tool" and isinstance(content, (dict, list)):
        return json.dumps(content, ensure_ascii=False)
    return str(content)


def _parse_tool_calls(i: int, calls) -> list[dict]:
    """An assistant turn's tool calls as [{"type": "function", "function": {"name", "arguments": dict}}] (the
    shape chat templates read); {name, arguments} without the `function` wrapper is taken too."""
    if isinstance(calls, str):
        try:
            calls = json.loads(calls)
        except json.JSONDecodeError:
            raise RowError(f"messages[{i}].tool_calls: a string that is not a JSON list of calls") from None
    if not isinstance(calls, list):
        raise RowError(f"messages[{i}].tool_calls: expected a list of {{type: function, function: {{name, "
                       f"arguments}}}}, got {type(calls).__name__}")
    out = []
    for j, call in enumerate(calls):
        where = f"messages[{i}].tool_calls[{j}]"
        function = (call.get("function") or call) if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise RowError(f"{where}: expected {{type: function, function: {{name, arguments}}}} with the tool's "
                           f"name, got {call!r:.80}")
        parsed = {"type": "function", "function": {"name": function["name"],
                                                   "arguments": _arguments(where, function.get("arguments"))}}
        if isinstance(call.get("id"), str):
            parsed["id"] = call["id"]
        out.append(parsed)
    return out


def _arguments(where: str, value) -> dict:
    """A call's arguments as a dict: a JSON object, or a string holding one (OpenAI's shape)."""
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as err:
            raise RowError(f"{where}: the arguments are not JSON ({err.msg} at character {err.pos} of "
                           f"{value!r:.60}): write them as a JSON object, e.g. {{\"city\": \"Oslo\"}}") from None
    elif isinstance(value, dict):
        # datasets' JSON reader gives every row's arguments the union of all rows' keys, the missing ones as
        # null; those nulls were never in the row, so they are dropped (write arguments as a JSON string to keep
        # a null of your own).
        value = _drop_nulls(value)
    if not isinstance(value, dict):
        raise RowError(f"{where}: the arguments should be a JSON object of parameter names and values, got "
                       f"{value!r:.60}")
    return value


def _drop_nulls(value):
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def check_tool_conversation(messages: list[dict], tools: Optional[list[dict]] = None) -> list[str]:
    """What is wrong with a parsed conversation's tool use, one line per problem naming the turn: tool calls on
    a turn that is not the assistant's, a `tool` turn with no call before it to answer, more tool results than
    calls, a `tool_call_id` that no call has, or (given the row's tools) a call to a tool the row does not list."""
    if not any(m["role"] == "tool" or m.get("tool_calls") for m in messages):
        return []  # no tool use, nothing below can be wrong (most chats: checked in one pass)
    problems = []
    pending: list[dict] = []  # the calls of the latest assistant turn that no tool turn has answered yet
    ids: set[str] = set()
    names = {t["function"]["name"] for t in tools} if tools else None
    for i, message in enumerate(messages):
        role = message["role"]
        calls = message.get("tool_calls") or []
        if calls and role != "assistant":
            problems.append(f"messages[{i}]: a {role} turn with tool_calls; only assistant turns call tools")
        if role == "assistant":
            pending = list(calls)
            ids = {c["id"] for c in calls if "id" in c}
            for j, call in enumerate(calls):
                if names is not None and call["function"]["name"] not in names:
                    problems.append(f"messages[{i}].tool_calls[{j}]: calls {call['function']['name']!r}, which "
                                    f"is not in the row's tools ({', '.join(sorted(names))})")
        elif role == "tool":
            if not pending:
                what = "more tool results than the calls before them" if ids else "no tool call before it to answer"
                problems.append(f"messages[{i}]: a tool turn with {what}: put the assistant turn whose "
                                "tool_calls it answers before it")
            elif message.get("tool_call_id") and ids and message["tool_call_id"] not in ids:
                problems.append(f"messages[{i}]: tool_call_id {message['tool_call_id']!r} names no call of the "
                                f"assistant turn before it ({', '.join(sorted(ids))})")
            else:
                pending.pop(0)
        else:
            pending, ids = [], set()
    return problems


def parse_tools(value) -> Optional[list[dict]]:
    """A row's `tools` column: the JSON schemas of the functions the model may call, as a list of
    {"type": "function", "function": {"name", "description", "parameters"}} (a JSON string holding the list,
    and bare {name, description, parameters} schemas, are taken too). None when the row has none."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise RowError(f"tools: not JSON ({err.msg} at character {err.pos}): write the list of the functions' "
                           "JSON schemas, e.g. [{\"type\": \"function\", \"function\": {\"name\": ..., "
                           "\"parameters\": {...}}}]") from None
    if not isinstance(value, list):
        raise RowError(f"tools: expected a list of the functions' JSON schemas, got {type(value).__name__}")
    out = []
    for j, tool in enumerate(value):
        function = (tool.get("function") or tool) if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise RowError(f"tools[{j}]: expected a function's JSON schema {{type: function, function: {{name, "
                           f"description, parameters}}}}, got {tool!r:.80}")
        # Null fields are datasets' filling when rows' schemas differ (see _arguments); a schema never needs one.
        out.append({"type": "function", "function": _drop_nulls(function)})
    return out or None


def parse_label(value, column: str = "label") -> bool:
    """An unpaired row's label: true/1 = desirable, false/0 = undesirable (a CSV cell holds them as text)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    if value is None:
        raise RowError(f"no '{column}' value: every row needs a label, true/1 (desirable) or false/0 (undesirable)")
    raise RowError(f"column '{column}' should hold true/false or 1/0 (desirable / undesirable), got {value!r:.60}: "
                   "write each label as one of those")


def label_counts(rows: list[dict]) -> tuple[int, int]:
    """(desirable, undesirable) rows among normalised unpaired rows."""
    desirable = sum(1 for r in rows if r["label"])
    return desirable, len(rows) - desirable


def _split_conversation(messages: list[dict]) -> dict:
    """A conversation whose last turn is the labelled completion: the turns before it are the prompt."""
    if messages[-1]["role"] != "assistant":
        raise RowError("messages: the last turn must be the assistant reply the label judges, got "
                       f"{messages[-1]['role']!r}")
    if len(messages) < 2:
        raise RowError("messages: no turn before the assistant reply, so there is no prompt")
    return {"prompt": messages[:-1], "completion": messages[-1:]}


def _parse_list(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise RowError("messages: a string that is not a JSON list of {role, content}") from None


def _is_messages(value) -> bool:
    if isinstance(value, list):
        return True
    return (isinstance(value, str) and value.lstrip().startswith("[{")
            and any(f'{q}{key}{q}' in value for key in ("role", "from") for q in "\"'"))


def _text(row: dict, col: str, fmt: Format) -> str:
    if col not in row or row[col] is None:
        raise RowError(f"no '{col}' value ({fmt.name} rows need {', '.join(fmt.columns)} in every row)")
    value = row[col]
    if isinstance(value, str) and not value.strip():
        raise RowError(f"column '{col}' is empty")
    if not isinstance(value, str):
        raise RowError(f"column '{col}' should hold text, got {type(value).__name__}")
    return value
