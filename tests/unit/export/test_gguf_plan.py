"""What `tunelaunch export` refuses before any weight loads, from json files alone (no model is built here)."""
import json

import pytest

from launcher.cli import main
from launcher.export.gguf_plan import check_gguf_exportable, plan_tokenizer
from launcher.export.source import ExportInputError, find_source

LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 300,
         "max_position_embeddings": 128, "rms_norm_eps": 1e-6,
         "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}
BYTE_LEVEL = {"model": {"type": "BPE", "vocab": {}, "merges": []}, "decoder": {"type": "ByteLevel"},
              "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}}


def model_folder(tmp_path, config=None, tokenizer=None, name="model"):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config or LLAMA))
    if tokenizer is not False:
        (folder / "tokenizer.json").write_text(json.dumps(tokenizer or BYTE_LEVEL))
    return folder


def refusal(folder) -> str:
    with pytest.raises(ExportInputError) as err:
        check_gguf_exportable(find_source(folder))
    return str(err.value)


def test_a_llama_with_a_byte_level_tokenizer_is_planned_as_gpt2_bpe(tmp_path):
    plan = check_gguf_exportable(find_source(model_folder(tmp_path)))
    assert (plan.model, plan.pre) == ("gpt2", "gpt-2")


def test_digit_splitting_byte_level_bpe_is_llama_cpp_smollm(tmp_path):
    pre = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                                 {"type": "ByteLevel", "use_regex": True}]}
    folder = model_folder(tmp_path, tokenizer={**BYTE_LEVEL, "pre_tokenizer": pre})
    assert plan_tokenizer(folder).pre == "smollm"


def test_sentencepiece_style_bpe_is_planned_as_llama_vocab(tmp_path):
    tokenizer = {"model": {"type": "BPE", "byte_fallback": True}, "decoder": {"type": "Sequence"}}
    assert plan_tokenizer(model_folder(tmp_path, tokenizer=tokenizer)).model == "llama"


@pytest.mark.parametrize("architecture", ["Qwen2ForCausalLM", "LlamaForSequenceClassification"])
def test_an_unsupported_architecture_is_named_with_what_is_supported(tmp_path, architecture):
    message = refusal(model_folder(tmp_path, {**LLAMA, "architectures": [architecture]}))
    assert architecture in message and "LlamaForCausalLM" in message and "--format safetensors" in message


def test_yarn_rope_scaling_is_refused_naming_it(tmp_path):
    config = {**LLAMA, "rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 5e5}}
    assert "'yarn'" in refusal(model_folder(tmp_path, config))


def test_an_unknown_pre_tokenizer_is_refused_naming_the_file(tmp_path):
    tokenizer = {**BYTE_LEVEL, "pre_tokenizer": {"type": "Whitespace"}}
    message = refusal(model_folder(tmp_path, tokenizer=tokenizer))
    assert "tokenizer.json" in message and "Whitespace" in message


def test_a_folder_without_tokenizer_json_is_refused(tmp_path):
    assert "no tokenizer.json" in refusal(model_folder(tmp_path, tokenizer=False))


def test_an_adapter_is_checked_against_its_base_models_config(tmp_path):
    base = model_folder(tmp_path, {**LLAMA, "architectures": ["GPT2LMHeadModel"]}, name="base")
    run = tmp_path / "run"
    run.mkdir()
    (run / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    (run / "tokenizer.json").write_text(json.dumps(BYTE_LEVEL))
    assert "GPT2LMHeadModel" in refusal(run) and "base model" in refusal(run)


def test_a_reward_models_adapter_is_refused_though_its_base_is_a_causal_lm(tmp_path):
    base = model_folder(tmp_path, name="base")
    run = tmp_path / "reward-run"
    run.mkdir()
    (run / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base),
                                                         "task_type": "SEQ_CLS"}))
    (run / "tokenizer.json").write_text(json.dumps(BYTE_LEVEL))
    assert "LlamaForSequenceClassification" in refusal(run)


def test_an_adapter_whose_base_is_missing_names_the_adapter_config(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path / "gone")}))
    with pytest.raises(ExportInputError, match="adapter_config.json"):
        find_source(run)


def test_a_folder_without_a_model_is_refused(tmp_path):
    with pytest.raises(ExportInputError, match="holds no model yet"):
        find_source(tmp_path)


# The command line: the same refusals exit 2 before any weight loads (there are no weights in these folders).

def test_cli_refuses_an_unsupported_architecture_with_exit_2(tmp_path, capsys):
    folder = model_folder(tmp_path, {**LLAMA, "architectures": ["MambaForCausalLM"]})
    assert main(["export", str(folder), "--output", str(tmp_path / "m.gguf")]) == 2
    assert "MambaForCausalLM" in capsys.readouterr().err
    assert not (tmp_path / "m.gguf").exists()


def test_cli_never_overwrites_an_existing_output(tmp_path, capsys):
    folder = model_folder(tmp_path)
    existing = tmp_path / "m.gguf"
    existing.write_bytes(b"keep me")
    assert main(["export", str(folder), "--output", str(existing)]) == 2
    assert "never overwritten" in capsys.readouterr().err and existing.read_bytes() == b"keep me"


def test_cli_refuses_a_dtype_the_format_does_not_have(tmp_path, capsys):
    folder = model_folder(tmp_path)
    assert main(["export", str(folder), "--format", "safetensors", "--dtype", "q8_0"]) == 2
    assert "--dtype q8_0 does not apply to --format safetensors" in capsys.readouterr().err


def test_cli_wants_a_gguf_file_name(tmp_path, capsys):
    assert main(["export", str(model_folder(tmp_path)), "--output", str(tmp_path / "model.bin")]) == 2
    assert ".gguf" in capsys.readouterr().err
