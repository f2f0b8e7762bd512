"""The kto trainer's own pieces, without training: the options it gives trl, the datasets it hands trl, and the
cut of trl's tokenised rows (the KL term's mismatched completion included) to the prompt/completion limits."""
from types import SimpleNamespace

from datasets import Dataset

from launcher.config.schema import RunConfig
from launcher.trainers.kto import cut_lengths, kto_config, unpaired_datasets


def config(**trainer) -> RunConfig:
    cfg = RunConfig()
    cfg.trainer.name = "kto"
    for key, value in trainer.items():
        setattr(cfg.trainer, key, value)
    return cfg


def test_the_options_reach_trls_config(tmp_path):
    from launcher.hardware import Hardware
    from launcher.planning import make_plan

    cfg = make_plan(None, ["recipe=kto/unpaired_tiny", "trainer.beta=0.3", "trainer.desirable_weight=0.8",
                           "trainer.undesirable_weight=1.25", f"project_name={tmp_path / 'run'}"], Hardware()).cfg
    args = kto_config(cfg, tmp_path, 32, False)
    assert (args.beta, args.desirable_weight, args.undesirable_weight) == (0.3, 0.8, 1.25)
    assert args.loss_type == "kto" and args.max_length is None  # our limits cut the rows instead
    assert args.train_sampling_strategy == "sequential"  # each row's KL completion is its batch neighbour's


def split(rows):
    return SimpleNamespace(rows=rows)


def test_train_rows_are_shuffled_once_and_conversations_are_message_lists():
    rows = [{"prompt": f"Q{i}?", "completion": f"A{i}.", "label": i < 8} for i in range(16)]  # sorted by label
    tokenizer = SimpleNamespace(chat_template="{{ messages }}")
    train, valid = unpaired_datasets(config(), SimpleNamespace(format="unpaired", train=split(rows), valid=None), tokenizer)
    assert valid is None and sorted(train["prompt"]) == sorted(r["prompt"] for r in rows)
    assert train["label"] != [r["label"] for r in rows]  # the seed's order, not the file's
    assert train["label"][:4].count(True) not in (0, 4) or train["label"][4:8].count(True) not in (0, 4)
    again, _ = unpaired_datasets(config(), SimpleNamespace(format="unpaired", train=split(rows), valid=None), tokenizer)
    assert again["prompt"] == train["prompt"]  # the same order on every rank and on resume

    cfg = config()
    cfg.data.chat_template = "chatml"
    train, valid = unpaired_datasets(cfg, SimpleNamespace(format="unpaired", train=split(rows), valid=split(rows[:2])), tokenizer)
    assert valid[0] == {"prompt": [{"role": "user", "content": "Q0?"}],
                        "completion": [{"role": "assistant", "content": "A0."}], "label": True}


def test_cut_keeps_the_prompts_end_and_each_completions_start_within_block_size():
    cfg = config()
    cfg.data.block_size, cfg.data.max_prompt_length, cfg.data.max_completion_length = 10, 4, 3
    rows = Dataset.from_list([
        {"prompt_ids": [1, 11, 12, 13, 14, 15], "completion_ids": [21, 22, 23, 24], "KL_completion_ids": [31, 32],
         "label": True},
        {"prompt_ids": [16, 17], "completion_ids": [25], "KL_completion_ids": [33, 34, 35, 36], "label": False},
    ])
    out, counts = cut_lengths(rows, cfg, bos_id=1)
    assert out[0]["prompt_ids"] == [1, 13, 14, 15]  # the bos stays, then the prompt's last tokens
    assert out[0]["completion_ids"] == [21, 22, 23] and out[0]["KL_completion_ids"] == [31, 32]
    assert out[1]["prompt_ids"] == [16, 17] and out[1]["completion_ids"] == [25]
    assert out[1]["KL_completion_ids"] == [33, 34, 35]
    assert counts == (1, 1) and "cut_prompt" not in out.column_names
