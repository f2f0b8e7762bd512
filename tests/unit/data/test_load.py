"""Finding and reading splits (folder, file, parquet, hub), validation rows, format detection and column_mapping."""
import json
from pathlib import Path

import pytest

from launcher.config.schema import RunConfig
from launcher.data import files, formats
from launcher.data.load import check_data, load_splits
from tests.unit.helpers import SAMPLES, data_config


def config(path, trainer: str = "sft", template: str = "chatml", **data) -> RunConfig:
    return data_config(path, trainer, template, **data)


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---- where the rows come from

def test_folder_with_train_and_valid_files():
    data = check_data(config(SAMPLES / "chat", valid_split="valid"))
    assert not data.problems
    assert data.format == "messages" and len(data.train.rows) == 40 and len(data.valid.rows) == 8
    assert data.train.source.file == SAMPLES / "chat" / "train.jsonl"


def test_a_single_file(tmp_path):
    file = write_jsonl(tmp_path / "mine.jsonl", [{"text": f"row {i}"} for i in range(3)])
    data = check_data(config(file, template="none"))
    assert not data.problems and [r["text"] for r in data.train.rows] == ["row 0", "row 1", "row 2"]


def test_local_parquet_with_message_lists(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(4)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    data = check_data(config(tmp_path))
    assert not data.problems, data.problems
    assert data.format == "messages" and data.train.rows[3]["messages"][1] == {"role": "assistant", "content": "a3"}


def test_jsonl_lines_that_are_bare_message_lists(tmp_path):
    """AutoTrain's chat example: each line is the list itself (datasets cannot read it)."""
    lines = [[{"content": "hello", "role": "user"}, {"content": "hi nice to meet you", "role": "assistant"}],
             [{"content": "how are you", "role": "user"}, {"content": "I am fine", "role": "assistant"}]]
    write_jsonl(tmp_path / "train.jsonl", lines)
    data = check_data(config(tmp_path))
    assert not data.problems and data.format == "messages" and len(data.train.rows) == 2


def test_hub_ids_take_the_config_from_the_path_or_from_the_split():
    assert files.locate("org/name", "train") == files.SplitSource(hub_id="org/name", split="train")
    assert files.locate("org/name:en", "train") == files.SplitSource(hub_id="org/name", hub_config="en",
                                                                     split="train")
    # AutoTrain's form: train_split "config:split"
    assert files.locate("org/name", "en:test[:100]") == files.SplitSource(hub_id="org/name", hub_config="en",
                                                                          split="test[:100]")


def test_hub_split_is_read_by_the_worker_and_validation_comes_from_its_tail(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None, token=None):
        calls.append((path, name, split))
        return datasets.Dataset.from_list([{"text": f"hub row {i}"} for i in range(10)])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cfg = config("someone/corpus", template="none", train_split="wiki:train", num_validation_samples=3)
    planned = check_data(cfg)
    assert not planned.problems and not planned.train.rows and not calls  # plan reads nothing from the hub
    assert any("hub dataset someone/corpus:wiki[train]" in n for n in planned.notes)

    loaded = load_splits(cfg)
    assert calls == [("someone/corpus", "wiki", "train")]
    assert [r["text"] for r in loaded.train.rows] == [f"hub row {i}" for i in range(7)]
    assert [r["text"] for r in loaded.valid.rows] == ["hub row 7", "hub row 8", "hub row 9"]


def test_validation_rows_come_from_the_tail_of_train_without_a_valid_split():
    cfg = config(SAMPLES / "text", template="none", num_validation_samples=5)
    data = check_data(cfg)
    every = [json.loads(line)["text"] for line in (SAMPLES / "text" / "train.jsonl").read_text().splitlines()]
    assert [r["text"] for r in data.valid.rows] == every[-5:]
    assert [r["text"] for r in data.train.rows] == every[:-5]
    assert data.valid.name == "tail-of-train"
    assert any("last 5 training rows" in n for n in data.notes)


def test_with_a_valid_split_num_validation_samples_takes_its_head():
    data = check_data(config(SAMPLES / "text", template="none", valid_split="valid", num_validation_samples=3))
    every = [json.loads(line)["text"] for line in (SAMPLES / "text" / "valid.jsonl").read_text().splitlines()]
    assert [r["text"] for r in data.valid.rows] == every[:3] and len(data.train.rows) == 40


def test_holding_out_every_row_is_a_problem():
    data = check_data(config(SAMPLES / "text", template="none", num_validation_samples=40))
    assert any(p.key == "data.num_validation_samples" and "leaves no training rows" in p.message
               for p in data.problems)


# ---- formats

@pytest.mark.parametrize("sample,trainer,template,fmt", [
    ("text", "sft", "none", "text"),
    ("chat", "sft", "chatml", "messages"),
    ("chat_csv", "sft", "zephyr", "messages"),
    ("prompt_completion", "sft", "none", "prompt_completion"),
    ("alpaca", "sft", "none", "alpaca"),
    ("preference", "dpo", "none", "preference"),
    ("preference_chat", "dpo", "chatml", "preference"),
    ("reward", "reward", "none", "reward_pair"),
])
def test_every_sample_format_is_detected_and_every_row_is_accepted(sample, trainer, template, fmt):
    data = check_data(config(SAMPLES / sample, trainer=trainer, template=template))
    assert not data.problems, data.problems
    assert data.format == fmt
    assert len(data.train.rows) >= 20


def test_alpaca_rows_with_and_without_input():
    rows = check_data(config(SAMPLES / "alpaca", template="none")).train.rows
    assert any(r["input"] for r in rows) and any(not r["input"] for r in rows)


def test_preference_rows_with_message_lists_keep_them():
    row = check_data(config(SAMPLES / "preference_chat", trainer="dpo")).train.rows[0]
    assert row["prompt"][0]["role"] == "user" and row["chosen"][0]["role"] == "assistant"
    assert isinstance(row["rejected"], list)


def test_autotrain_dpo_columns_prompt_text_rejected_text(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"prompt": "2+2?", "text": "4", "rejected_text": "5"}])
    data = check_data(config(tmp_path, trainer="dpo", template="none"))
    assert not data.problems and data.format == "preference"
    assert data.train.rows == [{"prompt": "2+2?", "chosen": "4", "rejected": "5"}]


def test_reward_trainer_takes_text_and_rejected_text():
    data = check_data(config(SAMPLES / "reward", trainer="reward", template="none"))
    assert data.format == "reward_pair" and set(data.train.rows[0]) == {"chosen", "rejected"}


def test_column_mapping_renames_user_columns(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"conversation": [{"role": "user", "content": "hi"},
                                                             {"role": "assistant", "content": "hello"}]}])
    data = check_data(config(tmp_path, map_text_column="conversation"))
    assert not data.problems and data.format == "messages"


def test_column_mapping_prompt_column_makes_sft_prompt_completion_rows(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"question": "2+2?", "answer": "4"}])
    data = check_data(config(tmp_path, template="none", map_prompt_text_column="question",
                             map_text_column="answer"))
    assert not data.problems and data.format == "prompt_completion"
    assert data.train.rows == [{"prompt": "2+2?", "completion": "4"}]


def test_column_mapping_for_dpo(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"q": "2+2?", "good": "4", "bad": "5"}])
    data = check_data(config(tmp_path, trainer="dpo", template="none", map_prompt_text_column="q",
                             map_text_column="good", map_rejected_text_column="bad"))
    assert not data.problems and data.train.rows == [{"prompt": "2+2?", "chosen": "4", "rejected": "5"}]


def test_format_override_picks_text_over_detected_messages(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"text": "plain", "messages": [{"role": "user", "content": "x"},
                                                                         {"role": "assistant", "content": "y"}]}])
    assert check_data(config(tmp_path)).format == "messages"
    data = check_data(config(tmp_path, template="none", format="text"))
    assert data.format == "text" and data.train.rows == [{"text": "plain"}]


def test_messages_in_a_text_column_and_python_repr_strings(tmp_path):
    """AutoTrain's docs print chat rows as Python lists (single quotes); a CSV cell may hold either form."""
    (tmp_path / "train.csv").write_text(
        'text\n"[{\'content\': \'hello\', \'role\': \'user\'}, {\'content\': \'hi\', \'role\': \'assistant\'}]"\n')
    data = check_data(config(tmp_path))
    assert not data.problems, data.problems
    assert data.format == "messages" and data.train.rows[0]["messages"][1] == {"role": "assistant", "content": "hi"}


def test_rename_map_is_empty_for_defaults():
    assert formats.rename_map(RunConfig().data, "sft") == {}


# ---- packing keys: read only with packing on; how it packs and the Alpaca template are launcher.resolve's notes

def test_packing_keys_without_packing_are_noted_not_checked():
    data = check_data(config(SAMPLES / "chat", chunk_size=100_000, wrap_packed_sequences=True))
    assert not data.problems  # a chunk_size above the model's max length is refused with packing on
    assert "data: chunk_size is ignored because data.packing is off" in data.notes
    assert "data: wrap_packed_sequences is ignored because data.packing is off" in data.notes
    assert not check_data(config(SAMPLES / "chat", chunk_size=0)).problems
    for chunk_size, key in ((100_000, "data.chunk_size / model.max_length"), (0, "data.chunk_size")):
        packed = check_data(config(SAMPLES / "chat", packing=True, chunk_size=chunk_size))
        assert [p.key for p in packed.problems] == [key]


def test_packing_for_a_trainer_that_does_not_pack_is_a_note_from_the_method_table():
    """Which trainers pack is the method table's (Method.packs): the others get validate.unused_keys' note."""
    from launcher.config.validate import unused_keys
    from launcher.methods import METHODS

    assert {m.name for m in METHODS.values() if m.packs} == {"sft", "dpo", "orpo", "cpo", "simpo", "kto", "reward"}
    cfg = config(SAMPLES / "preference", trainer="grpo", template="none", packing=True)
    assert "data.packing: True is not used by the grpo trainer (read by sft, reward, dpo, orpo, cpo, simpo, kto)" \
        in unused_keys(cfg)
    cfg = config(SAMPLES / "preference", trainer="dpo", template="none", packing=True)
    assert not [n for n in unused_keys(cfg) if n.startswith("data.packing")]


def test_the_data_notes_leave_packing_and_the_alpaca_template_to_resolve():
    packed = check_data(config(SAMPLES / "chat", packing=True))
    assert not any("best-fit" in n or "packing (wrapped)" in n for n in packed.notes), packed.notes
    alpaca = check_data(config(SAMPLES / "alpaca", template="none"))
    assert alpaca.format == "alpaca" and not alpaca.problems
    assert not any("alpaca template" in n for n in alpaca.notes), alpaca.notes
