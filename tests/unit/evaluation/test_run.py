"""What `tunelaunch eval` decides from the folder it is given, before anything loads: a run or a model folder,
whether prompts go through the chat template (and the line that says why), where the results go."""
from __future__ import annotations

import json
import shutil

import pytest

from launcher.embedded import build_tiny_llama
from launcher.evaluation.run import EvalError, chat_decision, find_target, output_folder


def test_a_model_folder_whose_tokenizer_has_a_template_is_prompted_through_it(tmp_path):
    target = find_target(build_tiny_llama())
    assert not target.is_run and target.chat_template == "tokenizer"
    assert chat_decision(target, None) == (True, "chat template: on (its tokenizer carries one; "
                                                 "--no-apply-chat-template to change)")
    chat, line = chat_decision(target, False)
    assert chat is False and line.startswith("chat template: off (as asked")
    assert output_folder(target, None).name == f"eval-{build_tiny_llama().name}"
    assert output_folder(target, tmp_path / "out") == tmp_path / "out"


def test_a_model_folder_without_a_template_is_prompted_as_plain_text_and_cannot_be_forced(tmp_path):
    folder = tmp_path / "plain"
    shutil.copytree(build_tiny_llama(), folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    target = find_target(folder)
    assert target.chat_template is None and chat_decision(target, None)[0] is False
    with pytest.raises(EvalError, match="has no chat template to prompt with"):
        chat_decision(target, True)


def test_a_folder_that_is_neither_a_run_nor_a_model_is_refused(tmp_path):
    with pytest.raises(EvalError, match="neither a run folder .* nor a model folder"):
        find_target(tmp_path)
