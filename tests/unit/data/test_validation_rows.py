"""Validation never reuses training rows (a valid_split that finds the training file is refused; rows are held out
of train by count or by fraction), and a data.path that names nothing local is a typo, unless it is a hub id."""
import json
import os

import pytest

from launcher.data import files
from launcher.data.files import DataFileError
from launcher.data.load import check_data, load_splits
from tests.unit.helpers import SAMPLES, data_config

TEXT_ROWS = [json.loads(line)["text"] for line in (SAMPLES / "text" / "train.jsonl").read_text().splitlines()]


def config(path, template: str = "none", **data):
    return data_config(path, "sft", template, **data)


def problems_about(data, key: str) -> list[str]:
    return [p.message for p in data.problems if p.key == key]


# ---- a validation split that is the training split

def test_a_single_file_with_a_valid_split_is_refused_naming_both_keys_and_the_ways_out():
    data = check_data(config(SAMPLES / "text" / "train.jsonl", valid_split="valid"))
    [message] = problems_about(data, "data.path / data.valid_split")
    assert "single file" in message and "'valid'" in message
    assert "folder" in message and "data.valid_split=null" in message and "data.validation_fraction=0.05" in message
    assert data.valid is None


def test_a_folder_whose_valid_split_finds_the_training_file_is_refused(tmp_path):
    (tmp_path / "train.jsonl").write_text((SAMPLES / "text" / "train.jsonl").read_text())
    os.symlink(tmp_path / "train.jsonl", tmp_path / "valid.jsonl")  # the same file under the validation name
    for split in ("valid", "train"):
        [message] = problems_about(check_data(config(tmp_path, valid_split=split)), "data.path / data.valid_split")
        assert "the training split itself" in message


def test_a_hub_valid_split_equal_to_the_train_split_is_refused():
    data = check_data(config("someone/corpus", valid_split="train"))
    assert problems_about(data, "data.path / data.valid_split")


def test_an_unmapped_csv_reports_its_columns_once(tmp_path):
    csv = tmp_path / "qa.csv"
    csv.write_text("question,answer\n2+2?,4\n")
    data = check_data(config(csv, valid_split="valid"))
    assert [p.key for p in data.problems].count("data.column_mapping") == 1


def test_a_hub_dataset_without_the_valid_split_names_it_when_read(monkeypatch):
    import datasets

    def load_dataset(path, name=None, split=None, token=None):
        if split != "train":  # what datasets says of a split the dataset lacks
            raise ValueError(f'Unknown split "{split}". Should be one of [\'train\'].')
        return datasets.Dataset.from_list([{"text": "hub row"}])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    with pytest.raises(DataFileError, match="no split 'valid'.*data.valid_split"):
        load_splits(config("someone/corpus", valid_split="valid"))


# ---- validation_fraction

def test_validation_fraction_holds_out_random_rows_with_the_seed_and_trains_on_the_rest():
    data = check_data(config(SAMPLES / "text", validation_fraction=0.1))
    held, kept = [r["text"] for r in data.valid.rows], [r["text"] for r in data.train.rows]
    assert len(held) == 4 and len(kept) == 36 and sorted(held + kept) == sorted(TEXT_ROWS)
    assert kept == [t for t in TEXT_ROWS if t not in held]  # the file's order
    assert held != TEXT_ROWS[-4:]  # drawn at random, not the tail
    assert "data: validation: 10% of train.jsonl held out (4 rows, seed 42); training uses the other 36" in data.notes

    again = check_data(config(SAMPLES / "text", validation_fraction=0.1))
    assert [r["text"] for r in again.valid.rows] == held
    other_seed = config(SAMPLES / "text", validation_fraction=0.1)
    other_seed.training.seed = 7
    assert [r["text"] for r in check_data(other_seed).valid.rows] != held


def test_validation_fraction_replaces_the_valid_split_of_a_single_file():
    data = check_data(config(SAMPLES / "text" / "train.jsonl", valid_split="valid", validation_fraction=0.05))
    assert not data.problems and len(data.valid.rows) == 2 and len(data.train.rows) == 38
    assert any("valid_split 'valid' is not read" in n for n in data.notes)


@pytest.mark.parametrize("fraction", [0, -0.1, 0.6, 1.0])
def test_validation_fraction_outside_zero_to_a_half_is_refused(fraction):
    data = check_data(config(SAMPLES / "text", validation_fraction=fraction))
    assert problems_about(data, "data.validation_fraction") and data.valid is None


def test_validation_fraction_and_num_validation_samples_together_are_refused():
    data = check_data(config(SAMPLES / "text", validation_fraction=0.1, num_validation_samples=3))
    assert problems_about(data, "data.num_validation_samples / data.validation_fraction")


def test_validation_fraction_of_a_hub_split_is_held_out_when_read(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda path, name=None, split=None, token=None:
                        datasets.Dataset.from_list([{"text": f"hub row {i}"} for i in range(20)]))
    cfg = config("someone/corpus", validation_fraction=0.25)
    planned = check_data(cfg)
    assert not planned.problems and planned.valid is None
    assert any("25% of someone/corpus[train] held out when the rows are read (seed 42)" in n for n in planned.notes)
    loaded = load_splits(cfg)
    assert len(loaded.valid.rows) == 5 and len(loaded.train.rows) == 15


# ---- a data.path that names nothing

def test_a_bare_name_that_is_not_local_is_refused_not_read_from_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_data").mkdir()
    [message] = problems_about(check_data(config("mydata")), "data.path")
    assert "Did you mean my_data?" in message and "only in the form org/name" in message
    assert files.locate("mydata", "train") is None
    # an org/name id that is nothing local stays a hub dataset (plan reads no network)
    hub = check_data(config("someone/corpus"))
    assert not hub.problems and hub.train.source.hub_id == "someone/corpus"


def test_a_misspelled_folder_suggests_the_local_one_even_in_the_hub_id_form(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "samples" / "chat").mkdir(parents=True)
    [message] = problems_about(check_data(config("sampels/chat")), "data.path")
    assert "Did you mean samples/chat?" in message


def test_a_misspelled_file_suggests_its_neighbours(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"text": "a"}\n')
    [message] = problems_about(check_data(config(tmp_path / "trian.jsonl")), "data.path")
    assert f"Did you mean {tmp_path / 'train.jsonl'}?" in message


@pytest.mark.parametrize("path,hub", [("org/name", True), ("org/name:config", True), ("HuggingFaceH4/no_robots", True),
                                      ("mydata", False), ("data/train.jsonl", False), ("./org/name", False),
                                      ("a/b/c", False)])
def test_the_hub_id_form(path, hub):
    assert files.looks_like_hub_id(path) is hub
