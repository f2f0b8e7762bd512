"""What `generate --messages FILE` and `chat --system TEXT` are given is checked before the model loads: a wrongly
shaped file, or a conversation the chat template refuses, is one error naming the input and the fix, exit 2 - not
a Jinja traceback after the weights loaded."""
import json

import pytest

from tests.conftest import run_cli

# A template that refuses system turns, as some models' templates do.
NO_SYSTEM = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
             "{% endif %}{{ m['content'] }}{% endfor %}")


def read_messages_file(path):
    from launcher.prompt_inputs import read_messages_file

    return read_messages_file(path)


def refusal(path) -> str:
    """The error read_messages_file raises for this file."""
    from launcher.prompt_inputs import PromptInputError

    with pytest.raises(PromptInputError) as err:
        read_messages_file(path)
    return str(err.value)


def write(tmp_path, value, name="messages.json"):
    path = tmp_path / name
    path.write_text(value if isinstance(value, str) else json.dumps(value))
    return path


@pytest.mark.parametrize("value, says", [
    ({"messages": [{"role": "user", "content": "hi"}]}, "expected a non-empty list"),
    ([], "expected a non-empty list"),
    ([{"role": "user", "text": "hi"}], "messages[0]: expected {role, content}"),
    ([{"role": "bot", "content": "hi"}], "unknown role 'bot'"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "the last turn is the assistant's"),
    ("[{'role': 'user', 'content': 'hi'", "not JSON"),
])
def test_a_wrongly_shaped_file_is_refused_naming_the_file(tmp_path, value, says):
    path = write(tmp_path, value)
    error = refusal(path)
    assert error.startswith(f"--messages {path}: ") and says in error, error


def test_a_missing_file_is_named(tmp_path):
    assert refusal(tmp_path / "nope.json").startswith(f"--messages {tmp_path / 'nope.json'}: cannot read it")


@pytest.mark.parametrize("turns", [
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
    [{"from": "system", "value": "be brief"}, {"from": "human", "value": "hi"}],
])
def test_role_content_and_sharegpt_turns_become_the_conversation(tmp_path, turns):
    assert read_messages_file(write(tmp_path, turns)) == [{"role": "system", "content": "be brief"},
                                                          {"role": "user", "content": "hi"}]


def test_generate_refuses_a_bad_file_before_the_run_folder_is_even_looked_at(tmp_path):
    bad = write(tmp_path, {"messages": [{"role": "user", "content": "hi"}]})
    done = run_cli("generate", str(tmp_path / "no-such-run"), "--messages", str(bad), cwd=tmp_path, timeout=300)
    assert done.returncode == 2, done.stderr
    assert f"--messages {bad}: " in done.stderr and '"role": "user"' in done.stderr
    assert "no-such-run" not in done.stderr and "Traceback" not in done.stderr


@pytest.fixture(scope="module")
def tiny() -> str:
    from launcher.embedded import build_tiny_llama

    return str(build_tiny_llama())


def test_generate_refuses_a_conversation_ending_with_the_assistant(tmp_path, tiny):
    path = write(tmp_path, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    done = run_cli("generate", tiny, "--messages", str(path), "--max-new-tokens", "2", cwd=tmp_path, timeout=300)
    assert done.returncode == 2 and "end the list with the user turn" in done.stderr, done.stdout + done.stderr


def test_generate_refuses_what_the_template_cannot_render_before_the_weights_load(tmp_path, tiny):
    template = write(tmp_path, NO_SYSTEM, "no_system.jinja")
    path = write(tmp_path, [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])
    done = run_cli("generate", tiny, "--template", str(template), "--messages", str(path), cwd=tmp_path, timeout=300)
    assert done.returncode == 2, done.stderr
    assert f"--messages {path}: the model's chat template cannot render it (System role not supported)" in done.stderr
    assert "Loading weights" not in done.stderr and "Traceback" not in done.stderr


def test_chat_refuses_a_system_message_the_template_cannot_render(tmp_path, tiny):
    template = write(tmp_path, NO_SYSTEM, "no_system.jinja")
    done = run_cli("chat", tiny, "--template", str(template), "--system", "be brief", cwd=tmp_path, input="hi\n",
                   timeout=300)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--system: the model's chat template cannot render it (System role not supported)" in done.stderr
    assert "Loading weights" not in done.stderr
