"""The template contract (launcher/generate.py): the token ids `generate` feeds a trained run are exactly the ids
the run's training samples held before their first trained token, for chat, Alpaca and prompt/completion data.

Each case saves a run folder as training does (the tokenizer with the template installed, the model, config.yaml)
and loads it back through `generate.from_run`, so the template's round trip through the saved tokenizer is part
of what is checked."""
import json
import shutil

import pytest

from launcher import generate, models
from launcher.config.schema import RunConfig
from launcher.data.encode import IGNORE, SFTEncoder
from launcher.data.load import check_data
from launcher.embedded import build_tiny_llama
from launcher.hardware import Hardware
from launcher.resolve import resolve
from launcher.run_dir import write_config
from tests.unit.helpers import SAMPLES


@pytest.fixture(scope="module")
def tiny() -> str:
    return str(build_tiny_llama())


def saved_run(tiny, tmp_path, sample: str, template: str, bos: bool = False):
    """(the checked data, the training samples' encoder, the run folder as generate loads it). bos: the
    tokenizer puts its bos token before every text, as Llama's do (the tiny one does not)."""
    cfg = RunConfig()
    cfg.model.name_or_path = tiny
    cfg.data.path = str(SAMPLES / sample)
    cfg.data.chat_template = template
    cfg.data.valid_split = None
    cfg.data.block_size = 512
    data = check_data(cfg)
    assert not data.problems, data.problems
    assert resolve(cfg, Hardware(), data.format).problems == []  # as the plan does (Alpaca under none -> alpaca)
    tokenizer = models.load_tokenizer(cfg)
    if bos:
        from tokenizers.processors import TemplateProcessing

        tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
            single=f"{tokenizer.bos_token} $A", special_tokens=[(tokenizer.bos_token, tokenizer.bos_token_id)])
        assert tokenizer("x")["input_ids"][0] == tokenizer.bos_token_id
    run = tmp_path / "run"
    run.mkdir()
    tokenizer.save_pretrained(run)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(f"{tiny}/{name}", run / name)
    write_config(run, cfg)
    encoder = SFTEncoder(tokenizer, data.format, cfg.data.chat_template)
    return data, encoder, generate.from_run(run)


def prompt_prefix(encoded) -> list[int]:
    first = next(i for i, label in enumerate(encoded.labels) if label != IGNORE)
    return encoded.input_ids[:first]


@pytest.mark.parametrize("template", ["chatml", "zephyr", "tokenizer", "alpaca"])
def test_chat_rows(tiny, tmp_path, template):
    data, encode, gen = saved_run(tiny, tmp_path, "chat", template)
    for row in data.train.rows:
        messages = row["messages"]
        first_reply = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
        assert gen.prompt_ids(messages=messages[:first_reply]) == prompt_prefix(encode(row)), messages


@pytest.mark.parametrize("template", ["none", "chatml"])
def test_alpaca_rows_with_and_without_input(tiny, tmp_path, template):
    data, encode, gen = saved_run(tiny, tmp_path, "alpaca", template)
    inputs = {bool(row["input"]) for row in data.train.rows}
    assert inputs == {True, False}  # the sample holds both kinds
    for row in data.train.rows:
        ids = gen.prompt_ids(text=row["instruction"], input_text=row["input"] or None)
        assert ids == prompt_prefix(encode(row)), row


@pytest.mark.parametrize("template,bos", [("none", False), ("none", True), ("chatml", False), ("zephyr", False)])
def test_prompt_completion_rows(tiny, tmp_path, template, bos):
    data, encode, gen = saved_run(tiny, tmp_path, "prompt_completion", template, bos)
    if bos:
        assert gen.tokenizer("x")["input_ids"][0] == gen.tokenizer.bos_token_id  # it survived the save
    assert gen.chat == (template != "none")
    for row in data.train.rows:
        assert gen.prompt_ids(text=row["prompt"]) == prompt_prefix(encode(row)), row


def test_the_contract_can_fail(tiny, tmp_path):
    """A run prompted with another template than it was trained with does not match its samples."""
    data, encode, gen = saved_run(tiny, tmp_path, "chat", "chatml")
    from launcher.data.templates import ZEPHYR

    gen.tokenizer.chat_template = ZEPHYR
    row = data.train.rows[0]
    assert gen.prompt_ids(messages=row["messages"][:1]) != prompt_prefix(encode(row))


def test_generate_stops_at_the_end_of_turn_of_the_saved_template(tiny, tmp_path):
    _, _, gen = saved_run(tiny, tmp_path, "chat", "chatml")
    assert gen.tokenizer.convert_tokens_to_ids("<|im_end|>") in gen.stop_ids
    config = json.loads((tmp_path / "run" / "tokenizer_config.json").read_text())
    assert "<|im_end|>" in json.dumps(config) or (tmp_path / "run" / "chat_template.jinja").is_file()
