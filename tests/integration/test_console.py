"""A quiet console (launcher/console.py): a run prints our plan, progress, metrics and real warnings, not the
libraries' routine notices; `--verbose` / TUNELAUNCH_VERBOSE=1 shows them; train.log keeps everything."""
import logging
import re
import subprocess
import sys

from launcher import console

from tests.conftest import run_cli

# Lines this CPU machine's libraries print on every tiny LoRA run (the quickstart's path: peft, trl's SFT config),
# and the notices that depend on the CPU or its core count. torch's pin_memory warning is not asked for at all
# (the Trainer pins memory only with a GPU), so it is in no output.
NOISE_SEEN = ("FutureWarning",)
NOISE_ANYWHERE = NOISE_SEEN + ("pin_memory", "gemm_4bit_forward", "were not passed to `accelerate launch`", "CalledProcessError",
                               "Setting accelerator to CPU")
TRUNCATED = re.compile(r"train: [1-9]\d* of 40 samples truncated to 48 tokens")


def _train(tmp_path, name, *extra, env=None):
    run = tmp_path / name
    result = run_cli("train", "recipe=sft/chat_tiny", "peft=lora", f"project_name={run}", "training.max_steps=1",
                     "data.block_size=48", "data.valid_split=null", *extra, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return run, result.stdout + result.stderr


def test_a_run_prints_no_library_noise_but_still_its_warnings_and_logs_everything(tmp_path):
    run, shown = _train(tmp_path, "quiet", env={console.VERBOSE_ENV: None})
    for noise in NOISE_ANYWHERE:
        assert noise not in shown, noise
    assert TRUNCATED.search(shown), shown[-3000:]  # a warning the user must see
    assert "Plan (valid)" in shown and "'loss'" in shown and "Finished:" in shown
    assert "Loading weights" not in shown and "Writing model shards" not in shown  # bars over local files
    log = (run / "train.log").read_text()
    for noise in NOISE_SEEN:  # hidden from the console, not lost
        assert noise in log, noise
    assert "pin_memory" not in log


def test_verbose_shows_the_library_noise(tmp_path):
    _, shown = _train(tmp_path, "loud", "--verbose", env={console.VERBOSE_ENV: None})
    for noise in NOISE_SEEN:
        assert noise in shown, noise
    assert TRUNCATED.search(shown)
    assert "Loading weights" in shown


def test_the_launchers_notice_and_its_traceback_go_but_the_workers_error_stays():
    """What accelerate launch printed around a failed worker (accelerate 1.15), through the line filter."""
    worker_error = ("Traceback (most recent call last):\n"
                    '  File "/work/main/launcher/data/processed.py", line 234, in _build\n'
                    "    raise EncodeError(...)\n"
                    "launcher.data.encode.EncodeError: valid.jsonl: no sample has a trained token left within 16 "
                    "tokens: raise data.block_size\n")
    stream = ("The following values were not passed to `accelerate launch` and had defaults used instead:\n"
              "\t`--num_cpu_threads_per_process` was set to `2` to improve out-of-box performance when training on "
              "CPUs\nTo avoid this warning pass in values for each of the problematic parameters or run "
              "`accelerate config`.\n"
              "Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'.\n"
              "2026-12-01 07:08:26,317 INFO launcher.worker: rank 0 of 1\n"
              " 50%|█████     | 1/2 [00:01<00:01,  1.65s/it]\r"
              + worker_error +
              "Traceback (most recent call last):\n"
              '  File "/work/main/.venv/bin/accelerate", line 6, in <module>\n'
              "    sys.exit(main())\n"
              "             ^^^^^^\n"
              "subprocess.CalledProcessError: Command '['/work/main/.venv/bin/python3', '-m', 'launcher.worker', "
              "'/tmp/r1/config.yaml']' returned non-zero exit status 1.\n"
              "\nTraining failed (exit 1)\n")
    out = []
    lines = console.LineFilter(out.append)
    for piece in re.split(r"(?<=[\r\n])", stream):
        if piece:
            lines.line(piece)
    lines.close()
    assert "".join(out) == ("2026-12-01 07:08:26,317 INFO launcher.worker: rank 0 of 1\n"
                            " 50%|█████     | 1/2 [00:01<00:01,  1.65s/it]\r" + worker_error
                            + "\nTraining failed (exit 1)\n")


def test_the_launcher_stream_is_filtered_unless_verbose(capfd, monkeypatch):
    """Through the pipe launch.run puts under a real child process's stderr."""
    script = ("import sys; sys.stderr.write('Failed to load CPU gemm_4bit_forward from kernels-community: x\\n"
              "a real line\\n'); sys.stderr.write('unfinished')")
    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    with console.launcher_stderr():
        assert subprocess.run([sys.executable, "-c", script]).returncode == 0
    assert capfd.readouterr().err == "a real line\nunfinished"

    monkeypatch.setenv(console.VERBOSE_ENV, "1")
    with console.launcher_stderr():
        subprocess.run([sys.executable, "-c", script])
    assert "gemm_4bit_forward" in capfd.readouterr().err


def test_noise_records_and_warnings_are_dropped_only_on_the_console(monkeypatch):
    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    noisy = logging.makeLogRecord({"msg": "Setting accelerator to CPU. If you have GPU or other accelerator, we were "
                                          "unable to detect it."})
    real = logging.makeLogRecord({"msg": "/x/transformers/trainer.py:10: FutureWarning: something else"})
    assert not console.NoiseFilter().filter(noisy) and console.NoiseFilter().filter(real)
    monkeypatch.setenv(console.VERBOSE_ENV, "1")
    assert console.NoiseFilter().filter(noisy)
    # the same wording from another origin than the library a pattern names is not noise
    assert not console.is_noise("my_script.py:3: FutureWarning: `gradient_checkpointing` is deprecated and will be "
                                "removed in v6. Use `activation_checkpointing` instead.")
    # and another renamed argument of transformers' is still shown: our code may be the one passing it
    assert not console.is_noise("/v/transformers/training_args.py:9: FutureWarning: `x` is deprecated and will be "
                                "removed in v6. Use `y` instead.")


def test_our_processes_leave_out_noisy_warnings_only(monkeypatch):
    """The CLI's own commands (merge, generate, prepare) run the libraries in-process: console.quiet."""
    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    shown = []
    monkeypatch.setattr(console, "_show", lambda message, *rest: shown.append(str(message)))
    renamed = "`gradient_checkpointing` is deprecated and will be removed in v6. Use `activation_checkpointing` instead."
    console._show_unless_noise(FutureWarning(renamed), FutureWarning, "/v/site-packages/transformers/training_args.py",
                               1541)
    console._show_unless_noise(UserWarning("3 of 40 samples truncated"), UserWarning, "/w/launcher/data/x.py", 3)
    assert shown == ["3 of 40 samples truncated"]
    monkeypatch.setenv(console.VERBOSE_ENV, "1")
    console._show_unless_noise(FutureWarning(renamed), FutureWarning, "/v/site-packages/transformers/x.py", 1)
    assert shown[-1] == renamed
