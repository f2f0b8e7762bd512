"""Files and folders that appear whole or not at all: a crash (or a kill -9) mid-write leaves only a hidden
temporary beside the target, never a half-written file or folder that a later run would trust."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


def write_text(target: Path, text: str) -> None:
    target = Path(target)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, target)


@contextmanager
def folder(out: Path, complete_marker: str):
    """Yield a temporary folder beside `out`; rename it to `out` when the block succeeds.

    When two processes race, the loser's rename fails because `out` is already a full folder (it holds
    `complete_marker`), and its copy is thrown away."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}-", dir=out.parent))
    try:
        yield tmp
        tmp.chmod(0o755)  # mkdtemp makes it private
        try:
            os.replace(tmp, out)  # succeeds onto a missing or empty folder
        except OSError:
            if not (out / complete_marker).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
