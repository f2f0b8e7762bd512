"""Each data format carries its behaviour on its row of the formats table (launcher/data/formats.py): reading,
what its trainer takes, the conversations a template renders, the template it needs under `none`, the trained
part and the flags other modules branch on. So no module outside formats.py compares format names: a new
format is a new row (and its tests), not a branch in every module that reads data."""
from __future__ import annotations

import ast
import dataclasses
import re

import pytest

from launcher.data import formats, mixture
from launcher.data.load import check_data
from launcher.data.templates import BUILTIN
from launcher.methods import METHODS
from tests.conftest import REPO
from tests.unit.helpers import SAMPLES, data_config

LAUNCHER = REPO / "launcher"
NAMES = {f.name for f in formats.FORMATS}
# The modules that name formats by right: the table itself, and the methods table (which formats each method takes).
OWNERS = {"launcher/data/formats.py", "launcher/methods.py"}
# Violations found when this test was written, reported to the modules' owner with the fix. Each must still be a
# violation (fixing one means removing it from here, or the test fails); nothing else may join them.
KNOWN: set[str] = set()  # (comparisons left to replace; none)
# A value that holds a format's name: `fmt`, `data.format`, `self.fmt`, `method.formats`, `reader.format.name`.
HOLDS_FORMAT = re.compile(r"fmt|format")

# One sample dataset of each format, with a trainer that reads it.
SAMPLE_OF = {"messages": ("chat", "sft"), "alpaca": ("alpaca", "sft"), "text": ("text", "sft"),
             "prompt_completion": ("prompt_completion", "sft"), "preference": ("preference", "dpo"),
             "reward_pair": ("reward", "reward"), "unpaired": ("kto", "kto"),
             "unpaired_messages": ("kto_chat", "kto"), "prompt_only": ("prompts", "grpo")}


def _names_in(node: ast.AST) -> list[str]:
    """Format names written out, or held by a collection of them in the formats module (`formats.UNPAIRED`)."""
    found = []
    for c in ast.walk(node):
        if isinstance(c, ast.Constant) and c.value in NAMES:
            found.append(c.value)
        name = c.attr if isinstance(c, ast.Attribute) else c.id if isinstance(c, ast.Name) else None
        held = getattr(formats, name, None) if name else None
        if isinstance(held, (tuple, list, set, frozenset)) and held and set(held) <= NAMES:
            found += list(held)
    return found


def _holds_format(node: ast.AST) -> bool:
    for n in ast.walk(node):
        if isinstance(n, ast.Name) and HOLDS_FORMAT.search(n.id) and n.id != "formats":  # (the module)
            return True
        if isinstance(n, ast.Attribute) and HOLDS_FORMAT.search(n.attr):
            return True
    return False


def format_name_uses(tree: ast.AST) -> list[str]:
    """Comparisons of a format-holding value with format names (`fmt == "alpaca"`, `data.format in (...)`), and
    literal lists of format names (a table of formats kept outside the formats table)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            named = [o for o in operands if _names_in(o)]
            if named and any(_holds_format(o) for o in operands if o not in named):
                found.append(f"compares a format with {tuple(_names_in(named[0]))!r}".replace(",)", ")"))
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set)) and len(node.elts) >= 2:
            if all(isinstance(e, ast.Constant) and e.value in NAMES for e in node.elts):
                found.append(f"lists the formats {tuple(e.value for e in node.elts)!r}")
    return found


def launcher_format_name_uses() -> set[str]:
    out = set()
    for path in sorted(LAUNCHER.rglob("*.py")):
        name = str(path.relative_to(REPO))
        if name not in OWNERS:
            out |= {f"{name}: {use}" for use in format_name_uses(ast.parse(path.read_text(), name))}
    return out


def test_the_checker_finds_what_it_looks_for(monkeypatch):
    bad = ast.parse('if fmt == "alpaca": pass\n'
                    'if data.format in ("preference", "reward_pair"): pass\n'
                    'if "prompt_only" in METHODS[t].formats: pass\n'
                    'if self.fmt != "text": pass\n'
                    'CHAT = ("messages", "alpaca")\n')
    assert len(format_name_uses(bad)) == 6  # (the line with a tuple is a comparison and a list)
    # (a collection of names kept in the formats module counts as its names)
    monkeypatch.setattr(formats, "PAIRS", ("preference", "reward_pair"), raising=False)
    assert format_name_uses(ast.parse("if fmt in formats.PAIRS: pass\n")) == [
        "compares a format with ('preference', 'reward_pair')"]
    clean = ast.parse('if "messages" in sample: pass\n'  # a column, not a format
                      'if rename.get(formats.SHAREGPT_COLUMN) == "messages": pass\n'
                      'if cfg.data.format != "auto": pass\n'
                      'if formats.BY_NAME[fmt].chat: pass\n')
    assert format_name_uses(clean) == []


def test_no_module_outside_the_formats_table_compares_format_names():
    found = launcher_format_name_uses()
    assert found - KNOWN == set(), ("use the format's row (formats.BY_NAME[fmt].chat, .unpaired, .answers, "
                                    ".under_none, .sft_sample, .trl_row, .conversations, .trained_part) instead:\n"
                                    + "\n".join(sorted(found - KNOWN)))
    assert KNOWN <= found, f"fixed, remove from KNOWN: {KNOWN - found}"


def test_every_format_has_its_behaviour_on_its_row():
    assert set(SAMPLE_OF) == NAMES  # (a new format brings a sample here)
    for fmt in formats.FORMATS:
        for behaviour in (fmt.read, fmt.shape, fmt.talks, fmt.trained):
            assert callable(behaviour), fmt.name
        assert fmt.under_none in (formats.PLAIN, formats.REFUSED) or fmt.under_none in BUILTIN, fmt.name
        assert fmt.trainers, f"{fmt.name}: no trainer takes it (the methods table)"
        if fmt.mixes_as is not None:  # the mixture's target is a row of the table with the same flags
            target = formats.BY_NAME[fmt.mixes_as]
            assert (target.chat, target.unpaired) == (fmt.chat, fmt.unpaired), fmt.name


def test_the_flags_agree_with_the_methods_table():
    for fmt in formats.FORMATS:
        readers = [METHODS[t] for t in fmt.trainers]
        assert fmt.unpaired == (fmt.trainers == ("kto",)), fmt.name
        assert fmt.unpaired == ("label" in fmt.columns), fmt.name
        if fmt.chat:  # chat rows are sft rows, and what online methods sample from is no answer
            assert set(fmt.trainers) == set(mixture.CHAT_READERS), fmt.name
        if fmt.answers:
            assert not any(m.online for m in readers), fmt.name
        assert fmt.answers == (any(m.pairs for m in readers) or fmt.unpaired), fmt.name


@pytest.mark.parametrize("name", sorted(SAMPLE_OF))
def test_each_format_shapes_its_sample_rows(name):
    folder, trainer = SAMPLE_OF[name]
    data = check_data(data_config(SAMPLES / folder, trainer, "chatml"))
    assert not data.problems and data.format == name
    fmt = formats.BY_NAME[name]
    row = data.train.rows[0]
    conversations = fmt.conversations(row)
    for conversation in conversations:
        assert conversation and all(m["role"] in formats.ROLES for m in conversation)
    if fmt.chat:  # one conversation, the sft sample under a chat template; a plain sample under none
        assert conversations == [fmt.sft_sample(row, chat=True)["messages"]]
    elif name == "text":
        assert conversations == [] and fmt.sft_sample(row, chat=True) == row
    else:  # trl's rows: strings as they are, or conversational, message lists a template renders
        plain, chat = fmt.trl_row(row, False), fmt.trl_row(row, True)
        assert set(plain) == set(chat) and {c for c in fmt.columns if c in row} <= set(chat)
        talked = [k for k in ("prompt", "chosen", "rejected", "completion") if k in chat]
        assert all(isinstance(chat[k], list) for k in talked)
        expected = 2 if "chosen" in fmt.columns else 1
        assert len(conversations) == expected


def test_the_template_under_none_and_the_trained_part_come_from_the_row():
    cfg = data_config(SAMPLES / "alpaca", "sft", "none")
    assert [formats.effective_template(cfg, f.name) for f in formats.FORMATS if f.under_none != formats.PLAIN] == [
        "alpaca", "none"]  # alpaca rows get the alpaca template; messages stay none (the preflight refuses them)
    refused = check_data(data_config(SAMPLES / "chat", "sft", "none"))
    assert [p.key for p in refused.problems] == ["data.chat_template"]
    assert "rows are chat messages but chat_template is none" in refused.problems[0].message
    cfg.data.add_eos_token = True
    parts = {f.name: f.trained_part(cfg) for f in formats.FORMATS}
    assert parts["text"] == "every token (the eos token appended)"
    assert parts["prompt_completion"] == "the completion and the eos token after it"
    assert parts["messages"] == parts["alpaca"] == "the assistant replies, each with the end-of-turn token that closes it"
    cfg.data.chat_template = "chatml"
    assert formats.BY_NAME["prompt_completion"].trained_part(cfg) == parts["messages"]
    cfg.trainer.train_on = "all"
    assert {f.trained_part(cfg) for f in formats.FORMATS} == {"every token"}


def test_a_new_format_is_a_row_the_data_check_reads(tmp_path, monkeypatch):
    """A format added to the table alone (here question/answer rows, a chat format) is detected, read, rendered
    and shaped by the modules that read data, none of which names it."""
    def read(row, fmt, label_column, roles):
        return {"question": formats._text(row, "question", fmt), "answer": formats._text(row, "answer", fmt)}

    def shape(row, chat):
        return {"messages": [{"role": "user", "content": row["question"]},
                             {"role": "assistant", "content": row["answer"]}]}

    qa = formats.Format("qa", ("question", "answer"), read, shape, lambda row: [shape(row, True)["messages"]],
                        lambda cfg: "the answers", chat=True, under_none=formats.REFUSED, mixes_as="messages")
    monkeypatch.setattr(formats, "FORMATS", (qa, *formats.FORMATS))
    monkeypatch.setitem(formats.BY_NAME, "qa", qa)
    monkeypatch.setitem(METHODS, "sft", dataclasses.replace(METHODS["sft"], formats=("qa", *METHODS["sft"].formats)))
    (tmp_path / "train.jsonl").write_text('{"question": "2+2?", "answer": "4"}\n{"question": "", "answer": "x"}\n')
    data = check_data(data_config(tmp_path, "sft", "chatml"))
    assert data.format == "qa"
    assert [p.message for p in data.problems] == [f"{tmp_path / 'train.jsonl'}: row 2: column 'question' is empty"]
    (tmp_path / "train.jsonl").write_text('{"question": "2+2?", "answer": "4"}\n')
    data = check_data(data_config(tmp_path, "sft", "chatml"))
    assert not data.problems and data.train.rows == [{"question": "2+2?", "answer": "4"}]
    assert formats.BY_NAME["qa"].sft_sample(data.train.rows[0], True)["messages"][1] == {"role": "assistant", "content": "4"}
    refused = check_data(data_config(tmp_path, "sft", "none"))
    assert [p.key for p in refused.problems] == ["data.chat_template"]
