"""Tool-calling chats and reasoning traces end to end through `tunelaunch prepare --show` (the encoder the sft
trainer trains on): the trained tokens are exactly the assistant's calls and replies, never a tool's result; the
reasoning is trained or not as trainer.train_on_reasoning says; and a bad row is refused before anything loads."""
import json
import re

import pytest

from tests.conftest import REPO, run_cli

SAMPLES = REPO / "samples"


def prepare(tmp_path, *overrides: str, show: int = 3):
    return run_cli("prepare", "--show", str(show), "recipe=sft/chat_tiny", "data.valid_split=null",
                   f"data.cache_dir={tmp_path / 'cache'}", f"project_name={tmp_path / 'run'}",
                   *overrides, cwd=tmp_path)


def shown_samples(out: str) -> list[str]:
    """The samples `prepare --show` printed, each with its trained spans in [[...]]."""
    return re.split(r"^-- sample \d+: \d+ tokens, \d+ trained$", out.split("== lengths")[0], flags=re.M)[1:]


def trained(sample: str) -> list[str]:
    return re.findall(r"\[\[(.*?)\]\]", sample, flags=re.S)


def rows(folder: str) -> list[dict]:
    return json.loads((SAMPLES / folder / "train.json").read_text())


def test_only_the_assistants_calls_and_replies_are_trained(tmp_path):
    result = prepare(tmp_path, f"data.path={SAMPLES / 'tools'}")
    assert result.returncode == 0, result.stderr[-3000:]
    samples = shown_samples(result.stdout)
    assert len(samples) == 3
    for sample, row in zip(samples, rows("tools")):
        calls = [m for m in row["messages"] if m["role"] == "assistant"]
        spans = trained(sample)
        assert len(spans) == len(calls), sample
        for span, turn in zip(spans, calls):
            assert span.endswith("<|im_end|>")
            for call in turn.get("tool_calls", []):
                arguments = json.dumps(json.loads(call["function"]["arguments"]))
                assert f'{{"name": "{call["function"]["name"]}", "arguments": {arguments}}}' in span
            assert turn["content"] in span
        results = [m["content"] for m in row["messages"] if m["role"] == "tool"]
        assert all(f"<|im_start|>tool\n{r}<|im_end|>" in sample for r in results)  # shown, never in [[...]]
        assert not any(r in span for r in results for span in spans)
        assert "<tools>" in sample and "get_weather" in sample.split("<|im_start|>user")[0]


@pytest.mark.parametrize("train_on_reasoning", [True, False])
def test_train_on_reasoning_decides_whether_the_trace_is_trained(tmp_path, train_on_reasoning):
    result = prepare(tmp_path, f"data.path={SAMPLES / 'reasoning'}",
                     f"trainer.train_on_reasoning={str(train_on_reasoning).lower()}", show=4)
    assert result.returncode == 0, result.stderr[-3000:]
    samples = shown_samples(result.stdout)
    for sample, row in zip(samples, rows("reasoning")):
        reply = row["messages"][-1]
        answer = reply["content"].split("</think>")[-1].strip()
        trace = reply.get("reasoning_content") or reply["content"].split("</think>")[0].removeprefix("<think>").strip()
        assert f"<think>\n{trace}\n</think>\n\n" in sample
        if train_on_reasoning:
            assert trained(sample) == [f"<think>\n{trace}\n</think>\n\n{answer}<|im_end|>"], sample
        else:
            assert trained(sample) == [f"{answer}<|im_end|>"], sample


def write_rows(tmp_path, rows: list[dict]):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_bad_tool_rows_are_named_with_their_row_and_exit_2(tmp_path):
    good = rows("tools")[0]
    bad_arguments = json.loads(json.dumps(good))
    bad_arguments["messages"][2]["tool_calls"][0]["function"]["arguments"] = "{city: Oslo}"
    orphan = {"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "4 C"},
                           {"role": "assistant", "content": "ok"}]}
    folder = write_rows(tmp_path, [good, bad_arguments, orphan])
    result = prepare(tmp_path, f"data.path={folder}")
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    said = result.stdout + result.stderr
    assert "row 2: messages[2].tool_calls[0]: the arguments are not JSON" in said, said
    assert "row 3: messages[1]: a tool turn with no tool call before it to answer" in said, said
    assert "Traceback" not in said


def test_a_template_that_cannot_render_tools_is_refused_before_loading(tmp_path):
    result = prepare(tmp_path, f"data.path={SAMPLES / 'tools'}", "data.chat_template=alpaca")
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    said = result.stdout + result.stderr
    assert "row 1 is a tool-calling chat, but the alpaca template does not show the tools' schemas" in said, said
