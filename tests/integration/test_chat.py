"""`tunelaunch chat` as a user runs it: lines piped in (stdout then holds the replies only) and typed on a terminal
(a pseudo-terminal: the `you> ` prompt, the banner, /exit). The slow test runs the README's commands, as written,
on a freshly trained run."""
import os
import pty
import re
import select
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import cli_env, run_cli

PIPED = ("printf 'Name a planet.\\nAnd another one?\\n' "
         "| tunelaunch chat runs/sft-chat-tiny --max-new-tokens 16 --show-prompt")
TYPED = "tunelaunch chat runs/sft-chat-tiny"
PROMPT_BLOCK = re.compile(r"--- prompt \(\d+ tokens\) ---\n(.*?)\n--- reply ---\n", re.S)


def shell(command: str, cwd: Path, **kwargs) -> subprocess.Popen | subprocess.CompletedProcess:
    """A README command line through bash, with this environment's `tunelaunch` first on PATH."""
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=300,
                          **kwargs)


def check_two_piped_turns(stdout: str, stderr: str) -> None:
    """The second prompt holds the first exchange in ChatML, with the reply that was printed first."""
    prompts = PROMPT_BLOCK.findall(stderr)
    assert len(prompts) == 2, stderr[-3000:]
    assert prompts[0] == "<|im_start|>user\nName a planet.<|im_end|>\n<|im_start|>assistant\n"
    head = prompts[0]
    assert prompts[1].startswith(head), prompts[1]
    tail = "<|im_end|>\n<|im_start|>user\nAnd another one?<|im_end|>\n<|im_start|>assistant\n"
    assert prompts[1].endswith(tail), prompts[1]
    first_reply = prompts[1][len(head):-len(tail)]
    assert stdout.startswith(first_reply + "\n") and stdout.endswith("\n"), (stdout, first_reply)
    assert "you> " not in stdout  # piped: no prompts, replies only


def type_on_a_terminal(command: str, cwd: Path, lines: list[str], timeout: float = 180) -> tuple[int, str]:
    """Run a command line on a pseudo-terminal, typing each line after each `you> ` prompt; (exit code, what the
    terminal showed)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(["bash", "-c", command], cwd=cwd, env=cli_env(), stdin=slave, stdout=slave, stderr=slave,
                            close_fds=True)
    os.close(slave)
    shown, deadline = b"", time.monotonic() + timeout

    def read_until(prompts: int) -> None:
        nonlocal shown
        while shown.count(b"you> ") < prompts:
            ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                proc.kill()
                raise AssertionError(f"no prompt in time; the terminal shows:\n{shown.decode(errors='replace')}")
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the program ended
                chunk = b""
            if not chunk:
                return
            shown += chunk

    try:
        for i, line in enumerate(lines, start=1):
            read_until(i)
            os.write(master, (line + "\n").encode())
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        read_until(len(lines) + 1)  # drain what is left
    finally:
        os.close(master)
    return code, shown.decode(errors="replace").replace("\r\n", "\n")


def test_piped_lines_on_a_model_folder_answer_two_turns(tmp_path, tiny_model):
    done = run_cli("chat", tiny_model, "--max-new-tokens", "8", "--show-prompt", cwd=tmp_path,
                   input="Name a planet.\nAnd another one?\n", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    check_two_piped_turns(done.stdout, done.stderr)


def test_typed_on_a_terminal(tmp_path, tiny_model):
    code, shown = type_on_a_terminal(f"tunelaunch chat {tiny_model} --max-new-tokens 8",
                                     tmp_path, ["Name a planet.", "/exit"])
    assert code == 0, shown[-3000:]
    assert "Chatting with" in shown and "/help lists the commands" in shown
    exchange = shown.split("you> Name a planet.\n", 1)[1].split("you> ", 1)[0]
    assert exchange.strip(), shown  # the reply, between the typed line and the next prompt


@pytest.mark.slow
def test_readme_chat_commands_on_a_trained_run(tmp_path):
    trained = run_cli("train", "recipe=sft/chat_tiny", "training.max_steps=2", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    piped = shell(PIPED, tmp_path)
    assert piped.returncode == 0, piped.stderr[-3000:]
    check_two_piped_turns(piped.stdout, piped.stderr)
    code, shown = type_on_a_terminal(TYPED, tmp_path, ["Name a planet.", "/exit"])
    assert code == 0 and "Chatting with runs/sft-chat-tiny" in shown, shown[-3000:]
