"""What a run prints: our plan, the progress bars, the metrics and real warnings, not the libraries' routine
notices. `--verbose` (or TUNELAUNCH_VERBOSE=1) shows everything; a worker's train.log always holds every record,
the filtered ones included.

NOISE is the one list of what is hidden. It is filtered in two places:
- in our processes (the CLI, every worker): Python's warnings and the log records matching NOISE are not printed
  (`quiet`; `NoiseFilter` on a worker's console handler, where warnings are records too); train.log keeps them;
- on the stderr of `accelerate launch`, which is not our process (`launcher_stderr`, around launch.run).
A pattern names its origin (a file path, a library's exact wording), so a new or a real warning always shows.
"""
from __future__ import annotations

import codecs
import logging
import os
import re
import select
import sys
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

VERBOSE_ENV = "TUNELAUNCH_VERBOSE"


@dataclass(frozen=True)
class Noise:
    pattern: str
    """Regular expression searched in a log record's message (a warning's text as Python prints it) or in a line
    of the launcher's stream."""
    why: str
    """Where it comes from, and why the user need not see it."""
    until: str = ""
    """A block of lines on the launcher's stream: the expression of its last line (hidden too)."""
    traceback: bool = False
    """The pattern is the last line of a traceback on the launcher's stream: the whole traceback is hidden."""


NOISE = (
    Noise(r"transformers/\S+\.py:\d+: FutureWarning: `(is_)?gradient_checkpointing\w*` is deprecated and will be "
          r"removed in v6\. Use `",
          "transformers 5 renamed gradient_checkpointing* to activation_checkpointing*: trl's configs default the "
          "old field (to True) and peft reads model.is_gradient_checkpointing, so every run warned twice about "
          "names the user never typed"),
    Noise(r"^Failed to load CPU gemm_4bit_forward from kernels-community",
          "bitsandbytes' CPU backend when it is imported (peft and trl import it): the optional `kernels` package is "
          "missing and it uses its own kernel instead"),
    Noise(r"Setting accelerator to CPU\. If you have GPU or other accelerator, we were unable to detect it",
          "DeepSpeed when it is imported on a machine without GPU; the plan already says where the run trains"),
    Noise(r"Gradient accumulation steps mismatch: GradientAccumulationPlugin has 1, DeepSpeed config has \d+\. "
          r"Using DeepSpeed's value",
          "accelerate under DeepSpeed: the Trainer leaves accelerate's own count at 1 and DeepSpeed's, which wins, "
          "is the deepspeed.json we wrote from training.gradient_accumulation"),
    Noise(r"^The following values were not passed to `accelerate launch` and had defaults used instead",
          "accelerate launch on CPU: it chose the threads per process itself; the config file we wrote fixes "
          "everything else", until=r"^To avoid this warning pass in values"),
    Noise(r"^subprocess\.CalledProcessError: Command .*launcher\.worker.* returned non-zero exit status",
          "accelerate launch re-raising its worker's exit (a failure, or 75 after a stop and save) as a traceback "
          "of its own: the worker's error is printed above it and the CLI states the outcome in one line",
          traceback=True),
)
_LINES = [(re.compile(n.pattern), n) for n in NOISE]


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def is_noise(text: str) -> bool:
    return any(rx.search(text) and not n.traceback for rx, n in _LINES)


class NoiseFilter(logging.Filter):
    """On a console handler: drops the records NOISE matches (nothing when verbose)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return verbose() or not is_noise(record.getMessage())


def quiet() -> None:
    """At the start of one of our processes, before the libraries are imported: Python's warnings, and the
    handlers that print when nothing else is configured (Python's last resort, DeepSpeed's own), leave out NOISE.
    A worker's setup_logging then sends warnings to its handlers, the console's with a NoiseFilter."""
    global _show
    if _show is None:
        _show = warnings.showwarning
        warnings.showwarning = _show_unless_noise
    for target in (logging.lastResort, logging.getLogger("DeepSpeed")):  # DeepSpeed's logger does not propagate
        if target is not None and not any(isinstance(f, NoiseFilter) for f in target.filters):
            target.addFilter(NoiseFilter())


_show = None


def hide_model_file_bars() -> None:
    """transformers' own bars over the files of a model already on disk ("Loading weights", "Writing model
    shards") say nothing while they last a second; hidden unless --verbose. Downloads keep their bars (those are
    huggingface_hub's, and a long download needs one)."""
    if not verbose():
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()


def _show_unless_noise(message, category, filename, lineno, file=None, line=None):
    # Not logging.captureWarnings here: a library gives the "py.warnings" logger a NullHandler, so with no handler
    # of ours every warning would vanish.
    if verbose() or not is_noise(warnings.formatwarning(message, category, filename, lineno, line)):
        _show(message, category, filename, lineno, file, line)


class LineFilter:
    """NOISE on a stream of text: single lines, blocks (`until`), and tracebacks whose last line matches
    (`traceback`: held from "Traceback (most recent call last):" until its exception line decides).
    Progress bars end in a carriage return; they are lines too, and pass at once."""

    def __init__(self, write):
        self.write = write
        self.block: re.Pattern | None = None
        self.held: list[str] = []

    def line(self, line: str) -> None:
        text = line.rstrip("\r\n")
        if self.block is not None:
            if self.block.search(text):
                self.block = None
            return
        if self.held:
            self.held.append(line)
            if text[:1].isspace() and len(self.held) < 500:
                return
            held, self.held = self.held, []
            if not any(n.traceback and rx.search(text) for rx, n in _LINES):
                self.write("".join(held))
            return
        if text == "Traceback (most recent call last):":
            self.held = [line]
            return
        for rx, n in _LINES:
            if not n.traceback and rx.search(text):
                self.block = re.compile(n.until) if n.until else None
                return
        self.write(line)

    def close(self) -> None:
        if self.held:
            self.write("".join(self.held))
            self.held = []


@contextmanager
def launcher_stderr(watch=None):
    """While the launcher runs: this process's stderr (fd 2, which the launcher and its workers inherit) goes
    through a LineFilter to the real one. Verbose: untouched, unless `watch` is given: it is called with every
    line (unfiltered), e.g. to learn how a worker died from the launcher's report."""
    try:
        real = -1 if verbose() and watch is None else os.dup(2)
    except OSError:  # no stderr to filter
        real = -1
    if real < 0:
        yield
        return
    sys.stderr.flush()
    read, write = os.pipe()
    os.dup2(write, 2)
    os.close(write)
    pump = threading.Thread(target=_pump, args=(read, real, watch), daemon=True)
    pump.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(real, 2)  # closes this process's end of the pipe; the pump ends when the last child's closes
        pump.join(timeout=10)
        if not pump.is_alive():
            os.close(real)


def _pump(read: int, real: int, watch=None) -> None:
    def write(text: str) -> None:
        try:
            os.write(real, text.encode(errors="replace"))
        except OSError:  # the terminal is gone: keep draining, so no writer blocks on a full pipe
            pass

    lines = LineFilter(write)
    if verbose():
        lines.line = write
    if watch is not None:
        shown = lines.line

        def seen(line: str) -> None:
            try:
                watch(line)
            finally:
                shown(line)

        lines.line = seen
    decode = codecs.getincrementaldecoder("utf-8")(errors="replace").decode  # a chunk may end inside a character
    partial = ""
    try:
        while True:
            # A piece of a line unfinished for 0.2 s (a prompt, a bar without its end) is shown as it is.
            ready, _, _ = select.select([read], [], [], 0.2 if partial else None)
            if not ready:
                write(partial)
                partial = ""
                continue
            chunk = os.read(read, 65536)
            if not chunk:
                break
            pieces = re.split(r"(?<=[\r\n])", partial + decode(chunk))
            partial = pieces.pop()
            for piece in pieces:
                lines.line(piece)
    except Exception:  # never leave the children writing into a pipe nobody reads: pass the rest unfiltered
        while chunk := os.read(read, 65536):
            write(decode(chunk))
    finally:
        lines.close()
        write(partial)
        os.close(read)
