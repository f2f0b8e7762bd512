"""The names a key goes by (launcher/config/aliases.py): ours, AutoTrain's and other tools', used by the
did-you-mean, `explain` and the recognition of an axolotl or LLaMA-Factory file."""
import pytest

from launcher.config import aliases
from launcher.config.parse import walk_fields
from launcher.config.schema import RunConfig
from tests.unit.config.foreign_configs import AXOLOTL, LLAMA_FACTORY

OUR_KEYS = {key for key, *_ in walk_fields(RunConfig)}


def test_every_alias_names_one_of_our_keys():
    assert not {alias: key for alias, key in aliases.ALIASES.items() if key not in OUR_KEYS}


def test_no_alias_repeats_a_name_autotrain_already_gives():
    # AutoTrain's names live in the docstrings; a second entry here would show twice in `explain`.
    autotrain = {name for *_, doc in walk_fields(RunConfig) for name in aliases.autotrain_names(doc)}
    assert not set(aliases.ALIASES) & autotrain


def test_autotrain_names_are_read_from_the_closing_brackets():
    assert aliases.autotrain_names("Peak learning rate. [lr]") == ["lr"]
    assert aliases.autotrain_names("Attention. [use_flash_attention_2: true = flash_attention_2]") == [
        "use_flash_attention_2"]
    assert aliases.autotrain_names("Per device. [batch_size, micro_batch_size]") == ["batch_size",
                                                                                     "micro_batch_size"]
    assert aliases.autotrain_names("No bracket here.") == []


@pytest.mark.parametrize("written,ours", [
    ("training.learning_rate", "training.lr"),  # another tool's name, in our section
    ("learning_rate", "training.lr"),
    ("micro_batch_size", "training.batch_size"),  # AutoTrain's second name (hosted API)
    ("sequence_len", "data.block_size"), ("cutoff_len", "data.block_size"),
    ("lora_r", "peft.r"), ("peft.lora_r", "peft.r"),
    ("trainer.name", "trainer.name"), ("task", "trainer.name"),  # ours and AutoTrain's
])
def test_key_named_finds_our_key_by_any_of_its_names(written, ours):
    assert aliases.key_named(written) == ours


def test_key_named_is_none_for_an_ambiguous_or_unknown_name():
    assert aliases.key_named("kind") is None  # cluster.kind or cluster.container.kind: no guess
    assert aliases.key_named("frobnicate") is None


def test_closest_key_forgives_a_misspelt_foreign_name():
    assert aliases.closest_key("lerning_rate") == "training.lr"
    assert aliases.closest_key("qwertyuiop") is None


@pytest.mark.parametrize("query,expected", [("lr", "training.lr"), ("lora_r", "peft.r"),
                                            ("learning_rate", "training.lr"), ("cutoff_len", "data.block_size"),
                                            ("training.l", "training.lr")])
def test_keys_matching_finds_a_key_by_any_name_or_prefix(query, expected):
    assert expected in aliases.keys_matching(query)


def test_keys_matching_keeps_a_section_to_itself_and_falls_back_to_substrings():
    assert all(key.startswith("data.") for key in aliases.keys_matching("data"))
    assert "data.block_size" in aliases.keys_matching("sequence_l")  # part of an alias
    assert aliases.keys_matching("qwertyuiop") == []


def test_an_axolotl_and_a_llama_factory_file_are_recognised():
    assert aliases.foreign_tool(AXOLOTL) == "axolotl"
    assert aliases.foreign_tool(LLAMA_FACTORY) == "LLaMA-Factory"


def test_our_own_and_autotrain_files_are_not_taken_for_foreign_ones():
    assert aliases.foreign_tool({"task": "llm-sft", "base_model": "gpt2", "params": {"lr": 1e-4}}) is None
    assert aliases.foreign_tool({"training": {"lr": 1e-4}, "peft": {"r": 8}}) is None
    # One stray foreign key in an AutoTrain file is a typo to correct, not another tool's file.
    assert aliases.foreign_tool({"task": "llm-sft", "base_model": "gpt2", "learning_rate": 1e-4}) is None


def test_the_foreign_message_maps_each_key_to_ours():
    message = aliases.foreign_message("axolotl", AXOLOTL)
    assert message.startswith("this looks like an axolotl config")
    for theirs, ours in [("lora_r", "peft.r"), ("learning_rate", "training.lr"), ("sequence_len", "data.block_size"),
                         ("micro_batch_size", "training.batch_size"), ("num_epochs", "training.epochs")]:
        assert f"`{theirs}` -> `{ours}`" in message
    message = aliases.foreign_message("LLaMA-Factory", LLAMA_FACTORY)
    assert message.startswith("this looks like a LLaMA-Factory config")
    assert "`cutoff_len` -> `data.block_size`" in message and "`lora_rank` -> `peft.r`" in message
    assert "No counterpart here: `do_train`." in message
