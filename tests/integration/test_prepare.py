"""`tunelaunch prepare`: the plan's checks, then the data as the model sees it, with the loss mask visible."""
import re

import pytest

from launcher import cli
from launcher.embedded import smollm2_folder

from tests.conftest import REPO, run_cli


def test_prepare_shows_samples_with_the_trained_tokens_marked(tmp_path):
    cache = tmp_path / "cache"
    result = run_cli("prepare", "--show", "2", "recipe=sft/chat_tiny", f"data.cache_dir={cache}",
                     f"project_name={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "Prepared messages rows for the sft trainer" in out and "template chatml" in out
    assert "tokenised now" in out
    assert len(re.findall(r"^-- sample \d+: \d+ tokens, \d+ trained$", out, flags=re.M)) == 2
    # the first chat sample, rendered: the prompt plain, the reply and its end-of-turn token marked as trained
    assert ("<|im_start|>user\nWhat is the boiling point of water?<|im_end|>\n<|im_start|>assistant\n"
            "[[At sea level, water boils at 100 degrees Celsius, which is 212 degrees Fahrenheit.<|im_end|>]]\n") in out
    assert "== lengths of the training samples" in out and "(truncated to 512)" in out
    assert "train: 0 of 40 samples truncated to 512 tokens" in out
    assert "valid: 8 rows -> 8 samples" in out
    assert "real/computed tokens =" in out
    assert not (tmp_path / "run").exists()  # prepare writes the cache, never the run folder

    again = run_cli("prepare", "--show", "0", "recipe=sft/chat_tiny", f"data.cache_dir={cache}",
                    f"project_name={tmp_path / 'run'}", cwd=tmp_path)
    assert again.returncode == 0 and "reused: nothing was tokenised" in again.stdout


def test_prepare_loads_no_model_weights(tmp_path, monkeypatch, capsys):
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("model weights were loaded")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", refuse)
    code = cli.main(["prepare", "--show", "1", "recipe=sft/chat_tiny", "data.packing=true",
                     f"data.cache_dir={tmp_path / 'cache'}", f"project_name={tmp_path / 'run'}"])
    out = capsys.readouterr().out
    assert code == 0
    assert "[[" in out and "packed 40 samples into" in out and "padding-free" in out


def test_prepare_reports_bad_data_and_exits_2(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text('{"messages": [{"role": "robot", "content": "beep"}]}\n')
    result = run_cli("prepare", "recipe=sft/chat_tiny", f"data.path={data}", "data.valid_split=null",
                     f"data.cache_dir={tmp_path / 'cache'}", cwd=tmp_path)
    assert result.returncode == 2
    assert "row 1: messages[0]: unknown role 'robot'" in result.stderr and "Nothing was started." in result.stderr
    assert not (tmp_path / "cache").exists()


def test_prepare_colours_the_trained_tokens_for_a_terminal(tiny_model):
    from rich.text import Text

    from launcher.config.schema import RunConfig
    from launcher.data.encode import SFTEncoder
    from launcher.models import load_tokenizer
    from launcher.prepare import marked_text

    cfg = RunConfig()
    cfg.model.name_or_path = str(tiny_model)
    cfg.data.chat_template = "chatml"
    tok = load_tokenizer(cfg)
    enc = SFTEncoder(tok, "messages", "chatml")({"messages": [{"role": "user", "content": "Hi"},
                                                            {"role": "assistant", "content": "Hello."}]})
    text = marked_text(tok, enc.input_ids, enc.labels, color=True)
    assert isinstance(text, Text) and "[[" not in text.plain
    green = [text.plain[s.start:s.end] for s in text.spans if s.style == "bold green"]
    assert green == ["Hello.<|im_end|>"]


@pytest.mark.slow
def test_prepare_the_quickstart_recipe(tmp_path):
    smollm2_folder()  # converted once and cached
    result = run_cli("prepare", "--show", "2", "recipe=sft/quickstart", f"data.cache_dir={tmp_path / 'cache'}",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert ("<|im_start|>user\nWhat is the capital of Italy?<|im_end|>\n<|im_start|>assistant\n"
            "[[Arr, matey! The capital of Italy be Rome, a grand old port of emperors and pasta!<|im_end|>]]") in out
    assert "train: 0 of 48 samples truncated to 256 tokens" in out


def test_prepare_counts_what_the_preference_trainers_cut(tmp_path, capsys):
    import json

    from launcher.models import load_tokenizer
    from launcher.planning import make_plan

    overrides = ["recipe=sft/chat_tiny", "trainer=orpo", "data.path=" + str(REPO / "samples" / "preference"),
                 "data.valid_split=null", "data.chat_template=none", "data.max_prompt_length=12",
                 f"project_name={tmp_path / 'run'}"]
    assert cli.main(["prepare", "--show", "1", *overrides]) == 0
    out = capsys.readouterr().out
    tok = load_tokenizer(make_plan(None, overrides).cfg)
    prompts = [json.loads(line)["prompt"] for line in (REPO / "samples" / "preference" / "train.jsonl").open()]
    longer = sum(len(tok(text=p)["input_ids"]) > 12 for p in prompts)
    assert 0 < longer < len(prompts)
    assert f"prompts cut to their last 12 tokens (max_prompt_length): {longer}" in out
    assert "[chosen] What is the capital of Norway?[[The capital of Norway is Oslo.]]" in out


def test_prepare_shows_the_packed_preference_rows(tmp_path):
    """The README's `prepare --show N` for a pairwise trainer with data.packing=true: each batch's best-fit row with
    its boundaries (a pair's two sequences side by side), and what packing saves in computed tokens."""
    result = run_cli("prepare", "--show", "1", "recipe=dpo/preference_tiny", "data.packing=true",
                     f"project_name={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "== packing (data.packing=true): batches of 2 examples" in out
    bounds = re.search(r"-- batch 1: 4 sequences in 1 row\(s\), boundaries \(cu_seq_lens\) \[([\d, ]+)\]", out)
    assert bounds, out[-2000:]
    cuts = [int(c) for c in bounds.group(1).split(", ")]
    assert cuts[0] == 0 and cuts == sorted(cuts) and len(cuts) == 5
    assert (f"[0, {cuts[1]}) example 1 chosen, [{cuts[1]}, {cuts[2]}) example 1 rejected, "
            f"[{cuts[2]}, {cuts[3]}) example 2 chosen") in out
    padded, packed = map(int, re.search(r"padded (\d+) .*packed (\d+) \(real/computed 1\.000\)", out).groups())
    assert packed < padded
