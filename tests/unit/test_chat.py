"""`tunelaunch chat` (launcher/chat.py): every turn is prompted with the whole conversation rendered by the run's
training template, the reply streamed and kept; /reset, /system, ctrl-C; and what the chat loads
(generate.load: a run folder, an unfinished run's checkpoint, a model folder with or without a chat template).

The expected prompts are written out by hand in ChatML (not rendered through the template under test), and the
ids the model receives are recorded at `model.generate`."""
import io
import json
import shutil

import pytest

from launcher import cli, generate
from launcher.chat import Conversation, ContextFull, Echo, converse
from launcher.config.errors import EXIT_CONFIG
from launcher.embedded import build_tiny_llama
from tests.unit.test_generate import saved_run


@pytest.fixture(scope="module")
def tiny() -> str:
    return str(build_tiny_llama())


@pytest.fixture
def chatml_run(tiny, tmp_path):
    return saved_run(tiny, tmp_path, "chat", "chatml")[2]


def chatml(*turns: tuple[str, str]) -> str:
    """A ChatML prompt written by hand: the turns, then the generation prompt."""
    return "".join(f"<|im_start|>{role}\n{text}<|im_end|>\n" for role, text in turns) + "<|im_start|>assistant\n"


def record(gen, interrupt_first: bool = False) -> list[dict]:
    """The arguments of every model.generate call (input ids as a list); optionally the first call shows some
    text and is then stopped by ctrl-C."""
    calls, real = [], gen.model.generate

    def spy(**kwargs):
        calls.append({**kwargs, "input_ids": kwargs["input_ids"][0].tolist()})
        if interrupt_first and len(calls) == 1:
            kwargs["streamer"].on_finalized_text("Half an ")
            raise KeyboardInterrupt
        return real(**kwargs)

    gen.model.generate = spy
    return calls


def talk(gen, lines, system=None, **options):
    """The chat loop over these input lines: (the conversation, stdout, stderr)."""
    conv, out, err, pending = Conversation(gen, system), io.StringIO(), io.StringIO(), iter(lines)
    assert converse(conv, lambda: next(pending, None), out, err, **{"max_new_tokens": 8, **options}) == 0
    return conv, out.getvalue(), err.getvalue()


def test_the_second_turn_is_prompted_with_the_first_exchange(chatml_run):
    calls = record(chatml_run)
    conv, out, _ = talk(chatml_run, ["Name a planet.", "And another one?"])
    assert len(calls) == 2
    first, second = conv.turns[1]["content"], conv.turns[3]["content"]
    assert first  # a reply the second turn can be seen to carry
    prompts = [chatml_run.tokenizer.decode(c["input_ids"]) for c in calls]
    assert prompts[0] == chatml(("user", "Name a planet."))
    assert prompts[1] == chatml(("user", "Name a planet."), ("assistant", first), ("user", "And another one?"))
    assert calls[1]["input_ids"][:len(calls[0]["input_ids"])] == calls[0]["input_ids"]
    assert out == f"{first}\n{second}\n"  # streamed, and exactly what the conversation keeps
    assert all(isinstance(c["streamer"], Echo) and c["do_sample"] is False for c in calls)
    assert calls[0]["eos_token_id"] == chatml_run.stop_ids


def test_reset_and_system(chatml_run):
    calls = record(chatml_run)
    _, _, err = talk(chatml_run, ["Hi", "/reset", "Hello", "/system Be brief.", "Again", "/reset", "More",
                                  "/system", "Last", "/nonsense"], system="Talk like a pirate.")
    prompts = [chatml_run.tokenizer.decode(c["input_ids"]) for c in calls]
    assert prompts == [chatml(("system", "Talk like a pirate."), ("user", "Hi")),
                       chatml(("system", "Talk like a pirate."), ("user", "Hello")),  # /reset keeps the system
                       chatml(("system", "Be brief."), ("user", "Again")),
                       chatml(("system", "Be brief."), ("user", "More")),
                       chatml(("user", "Last"))]
    assert err.count("(conversation cleared)") == 2 and "/system TEXT" in err  # an unknown command shows the help


def test_ctrl_c_stops_the_reply_and_drops_that_exchange(chatml_run):
    calls = record(chatml_run, interrupt_first=True)
    conv, out, err = talk(chatml_run, ["Name a planet.", "And another one?"])
    assert len(calls) == 2 and "reply stopped" in err
    assert chatml_run.tokenizer.decode(calls[1]["input_ids"]) == chatml(("user", "And another one?"))
    assert [t["content"] for t in conv.turns][0] == "And another one?"
    assert out == f"Half an\n{conv.turns[1]['content']}\n"


def test_sampling_and_exit(chatml_run):
    calls = record(chatml_run)
    conv, _, _ = talk(chatml_run, ["Hi", "/exit", "never read"], temperature=0.7)
    assert len(calls) == 1 and calls[0]["do_sample"] is True and calls[0]["temperature"] == 0.7
    assert len(conv.turns) == 2


def test_a_run_without_chat_template_continues_one_running_text(tiny, tmp_path):
    gen = saved_run(tiny, tmp_path, "prompt_completion", "none")[2]
    assert not gen.chat
    calls = record(gen)
    conv, _, _ = talk(gen, ["Once upon a time", "The end"], system="A story.")
    reply = conv.turns[1]["content"]
    assert calls[1]["input_ids"] == gen.tokenizer(text=f"A story.\nOnce upon a time\n{reply}\nThe end")["input_ids"]


def test_the_oldest_exchanges_make_room_in_the_context(chatml_run):
    limit = chatml_run.model.config.max_position_embeddings
    long = "planet " * limit
    conv = Conversation(chatml_run, turns=[{"role": "user", "content": long}, {"role": "assistant", "content": "No."}])
    assert len(conv.prompt_ids("Hi")) > limit  # the history alone overflows
    ids, dropped = conv.fitted_prompt("Hi", 16)
    assert dropped == 1 and chatml_run.tokenizer.decode(ids) == chatml(("user", "Hi"))
    with pytest.raises(ContextFull, match="context of"):
        conv.fitted_prompt(long, 16)
    conv, _, err = talk(chatml_run, [long, "Hi"])
    assert "do not fit" in err and [t["content"] for t in conv.turns][0] == "Hi"  # the chat goes on


def test_echo_shows_the_reply_without_surrounding_whitespace():
    out = io.StringIO()
    echo = Echo(None, out)
    for chunk in ["\n ", "Hello ", "", "big \n", "world\n\n"]:
        echo.on_finalized_text(chunk)
    echo.on_finalized_text("", stream_end=True)
    assert out.getvalue() == "Hello big \nworld\n"


def test_load_model_folders_and_unfinished_runs(tiny, tmp_path):
    assert generate.load(tiny).chat  # the tiny model's tokenizer has a chat template
    plain = tmp_path / "plain"
    shutil.copytree(tiny, plain, ignore=shutil.ignore_patterns("chat_template.jinja"))
    assert not generate.load(plain).chat  # no template: plain text
    assert generate.load(plain, "chatml").chat
    with pytest.raises(FileNotFoundError, match="nor a model folder"):
        generate.load(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="'chatmll' is neither"):
        generate.load(plain, "chatmll")

    saved_run(tiny, tmp_path, "chat", "chatml")
    run = tmp_path / "run"
    checkpoint = run / "checkpoint-3"
    checkpoint.mkdir()
    for path in run.iterdir():  # the run as it is while training: config.yaml and a checkpoint
        if path.name != "config.yaml" and path != checkpoint:
            path.rename(checkpoint / path.name)
    with pytest.raises(FileNotFoundError, match="holds no model yet"):
        generate.load(run)  # the checkpoint is not complete without its trainer_state.json
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 3}))
    gen = generate.load(run)
    assert gen.source == checkpoint and gen.chat


def test_cli_refuses_bad_arguments_before_loading(tiny, tmp_path, capsys):
    saved_run(tiny, tmp_path, "chat", "chatml")
    assert cli.main(["chat", str(tmp_path / "run"), "--template", "zephyr"]) == EXIT_CONFIG
    assert "--template is for a plain model folder" in capsys.readouterr().err
    assert cli.main(["chat", str(tmp_path / "nothing")]) == EXIT_CONFIG
    assert "neither a run folder" in capsys.readouterr().err
    assert cli.main(["chat", tiny, "--temperature", "-1"]) == EXIT_CONFIG
    assert "--temperature" in capsys.readouterr().err
