"""benchmarks/gpu_wheels.sh and benchmarks/gpu_device.sh: the wheels a GPU run carries to a machine that reaches no
package registry, and the command that installs them there and runs benchmarks/gpu.py.

The fast test reads `gpu_wheels.sh --list` (no download): the set of packages carried, their versions (.venv's),
and a device command that installs from the carried folder alone. The slow test rehearses the GPU image on CPU."""
from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO

WHEELS_SH = REPO / "benchmarks" / "gpu_wheels.sh"
DEVICE_SH = REPO / "benchmarks" / "gpu_device.sh"

# What the GPU image lacks and a GPU run needs: the product's dependencies (trl, datasets, hydra-core, omegaconf),
# the GPU paths' packages (deepspeed, liger-kernel, bitsandbytes) and their requirements the image does not have.
# Written out here, not read from the script, so a package the script stops carrying fails the test.
CARRIED = {
    "trl", "datasets", "dill", "multiprocess", "hydra-core", "omegaconf", "antlr4-python3-runtime", "deepspeed",
    "hjson", "pydantic", "pydantic-core", "annotated-types", "typing-inspection", "liger-kernel", "bitsandbytes",
}
# Not in .venv: pinned by the script (the rest must be .venv's versions, what the test suite ran).
FIXED = {"liger-kernel": "0.8.5"}

# The GPU image as far as PyPI has it for Python 3.11 (see the rehearsal's docstring).
IMAGE = [
    "transformers==5.17.0", "accelerate==1.15.0", "huggingface_hub==1.33.0", "tokenizers==0.23.2",
    "safetensors==0.8.0", "numpy==2.4.6", "triton==3.6.0",
    "peft", "pyarrow", "pandas", "fsspec", "xxhash", "requests", "httpx", "aiohttp", "tqdm", "pyyaml", "packaging",
    "psutil", "msgpack", "py-cpuinfo", "ninja", "einops", "nvidia-ml-py", "filelock", "jinja2", "rich", "matplotlib",
    "regex", "sentencepiece", "typing-extensions",
]


def list_mode() -> tuple[dict, str, str]:
    out = subprocess.run(["bash", str(WHEELS_SH), "--list"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    pins = dict(m.groups() for m in re.finditer(r"^  (\S+)==(\S+)$", out.stdout, re.M))
    lines = out.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("device command"))
    return pins, lines[header], lines[header + 1]


def test_list_names_what_the_image_lacks_at_the_tested_versions_and_an_offline_device_command():
    pins, header, command = list_mode()
    assert set(pins) == CARRIED
    for name, version in pins.items():
        assert version == FIXED.get(name) or version == importlib.metadata.version(name), (name, version)
    # The folder is git-ignored, so it travels only when carried.
    assert '(carry: [".gpu-wheels"])' in header
    assert "/.gpu-wheels/" in (REPO / ".gitignore").read_text().splitlines()
    assert command == 'bash benchmarks/gpu_device.sh .gpu-wheels "$OUT"' and len(command) < 2000

    # The device side installs from the carried folder only: --no-index, and nothing that names or reaches an index.
    script = DEVICE_SH.read_text()
    code = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("#"))
    installs = [line for line in code.splitlines() if "pip install" in line]
    assert len(installs) == 1
    words = shlex.split(installs[0])
    for flag in ("--no-index", "--no-deps", "--no-compile", "--no-cache-dir", "--target"):
        assert flag in words, flag
    assert words[-1] == "$WHEELS/*.whl"                      # the carried folder's wheels, and nothing else
    assert not {"-i", "-f", "--pre"} & set(words)
    for reaching in ("--index-url", "--extra-index-url", "--find-links", "pip download", "http://", "https://",
                     "curl", "wget", "git clone"):
        assert reaching not in code, reaching
    assert "export PIP_NO_INDEX=1" in code                    # no pip started later reaches for a registry
    assert 'PYTHONPATH="$SITE:$PWD"' in code                  # the carried wheels, then the checkout itself
    assert 'benchmarks/gpu.py --results "$OUT_DIR"' in code


def test_an_unknown_package_version_stops_the_script(tmp_path):
    """Versions come from the interpreter the script reads: one that lacks the packages fails, naming them."""
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=60)
    out = subprocess.run(["bash", str(WHEELS_SH), "--list"], cwd=REPO, capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, GPU_WHEELS_VENV_PYTHON=str(bare / "bin" / "python")))
    assert out.returncode != 0
    assert "not installed in .venv" in out.stderr and "trl" in out.stderr and "liger-kernel" not in out.stderr


# ---------------------------------------------------------------------------------------------------------------


def clean_env(**extra) -> dict:
    """This process's environment without what would make the image's Python see .venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return {**env, **extra}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_rehearsal_of_the_gpu_image_on_cpu(tmp_path):
    """The GPU image rehearsed on CPU: a scratch Python 3.11 venv with the image's pinned versions where PyPI has
    them (transformers 5.17.0, accelerate 1.15.0, huggingface_hub 1.33.0, tokenizers 0.23.2, safetensors 0.8.0,
    triton 3.6.0) and the image's other packages the stack imports, unpinned. Two stand-ins: torch 2.13.0's CPU
    build, not 2.11 (torch 2.11's PyPI wheels are CUDA builds of several GB; 2.13 CPU is the closest), and numpy
    2.4.6, not 2.5.2 (2.5 has no wheel for Python 3.11). Python 3.11, not the image's 3.12, as torch's CPU build is
    at hand for 3.11 only; gpu_wheels.sh is run with GPU_WHEELS_PYTHON=3.11 for the same content.

    Then, as on the GPU machine: gpu_wheels.sh into a temporary folder, and gpu_device.sh installing it (--no-index
    --no-deps --target) and running `gpu.py --dry-run --results DIR`. Every row that runs on CPU must not fail or be
    skipped for a missing package, and trl, datasets, hydra, omegaconf, deepspeed and liger_kernel must import
    beside transformers 5.17. pip's cache is kept in the temporary folder too."""
    start = time.monotonic()
    env = clean_env(PIP_CACHE_DIR=str(tmp_path / "pip-cache"))
    image = tmp_path / "image"
    py = image / "bin" / "python"

    def run(*cmd, timeout=600, **kw):
        out = subprocess.run([str(c) for c in cmd], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                             env=kw.pop("env", env), **kw)
        assert out.returncode == 0, f"{cmd}:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
        return out

    run(sys.executable, "-m", "venv", image)
    run(py, "-m", "pip", "install", "-q", "torch==2.13.0")
    run(py, "-m", "pip", "install", "-q", *IMAGE)
    # The image has none of the carried packages; PyPI's newest typer requires pydantic, so it came along here
    # (the image's typer is older): it goes, as the image has it not.
    run(py, "-m", "pip", "uninstall", "-q", "-y", *CARRIED)
    print(f"image venv: {time.monotonic() - start:.0f} s")
    listed = run(py, "-c", "import importlib.metadata as md, json; "
                           "print(json.dumps([d.metadata['Name'] for d in md.distributions()]))")
    names = {re.sub(r"[-_.]+", "-", n).lower() for n in json.loads(listed.stdout)}
    assert names & CARRIED == set() and "transformers" in names, "the rehearsal image has what must be carried"

    wheels = tmp_path / "wheels"
    made = run("bash", WHEELS_SH, wheels, env={**env, "GPU_WHEELS_PYTHON": "3.11"})
    print(made.stdout)
    assert len(list(wheels.glob("*.whl"))) == len(CARRIED)
    print(f"wheels: {time.monotonic() - start:.0f} s")

    out_dir, site = tmp_path / "out", tmp_path / "site"
    device = run("bash", DEVICE_SH, wheels, out_dir, "--dry-run", timeout=900,
                 env={**env, "PYTHON": str(py), "GPU_SITE": str(site)})
    print(f"device script: {time.monotonic() - start:.0f} s")

    versions = (out_dir / "versions.txt").read_text()
    print(versions)
    assert "transformers 5.17.0" in versions and "cuda device: none" in versions
    for module in ("torch", "transformers", "trl", "datasets", "peft", "accelerate", "deepspeed", "liger_kernel",
                   "bitsandbytes", "hydra"):
        assert re.search(rf"^{module} \d", versions, re.M), f"{module} did not import:\n{versions}"
    assert "requirements of the carried wheels not met here: none" in versions

    rows = [json.loads(line) for line in (out_dir / "gpu.jsonl").read_text().splitlines() if line.strip()]
    assert rows, device.stdout[-3000:]
    for row in rows:
        assert "row" in row and "status" in row, row
        assert not row["status"].startswith(("failed", "stopped")), row
        assert "missing" not in row["status"], row            # a package the wheels should have brought
        if row["status"].startswith("skipped"):
            assert "CUDA" in row["status"], row                # only what needs a GPU is skipped on CPU
    smokes = [r for r in rows if str(r["row"]).startswith("smoke-")]
    assert smokes and all(r["status"] in ("planned", "ok") for r in smokes), smokes
    assert any(r["status"] == "ok" for r in rows if not str(r["row"]).startswith("smoke-"))
    assert (out_dir / "gpu.md").is_file()

    # The carried packages beside the image's transformers: imported, and their first uses that touch it.
    probe = run(py, "-c", """
import importlib.metadata as md
import transformers, trl, datasets, hydra, omegaconf, deepspeed, liger_kernel
for d in ("transformers", "trl", "datasets", "hydra-core", "omegaconf", "deepspeed", "liger-kernel", "torch"):
    print(d, md.version(d))
from trl import SFTConfig, SFTTrainer
from liger_kernel.transformers import apply_liger_kernel_to_llama
apply_liger_kernel_to_llama()
print(datasets.Dataset.from_dict({"a": [1, 2]}).map(lambda r: {"b": r["a"] * 2})["b"])
""", env={**env, "PYTHONPATH": f"{site}:{REPO}"})
    print(probe.stdout)
    assert "transformers 5.17.0" in probe.stdout and "[2, 4]" in probe.stdout
    print(f"total: {time.monotonic() - start:.0f} s")


def readme_gpu_block() -> list[str]:
    """The commands of README's "On a GPU" block, comments stripped."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"\*\*On a GPU\.\*\*.*?```bash\n(.*?)```", text, re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def test_the_readme_gpu_block_is_the_tested_commands():
    """The README's three lines are the ones the tests run: the wheelhouse (slow test below, as written), the device
    command gpu_wheels.sh prints, and the merge (tests/benchmarks/test_gpu_dry_run.py, into a scratch file)."""
    build, device, merge = readme_gpu_block()
    assert build == "bash benchmarks/gpu_wheels.sh"
    assert device == list_mode()[2]
    assert merge == "python benchmarks/results.py merge OUT/gpu.md"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_readme_wheelhouse_command_as_written():
    """`bash benchmarks/gpu_wheels.sh` as the README writes it: the image's CPython 3.12 wheels into .gpu-wheels/
    (git-ignored), one per carried package, under the carry limit, and the device command printed last."""
    build = readme_gpu_block()[0]
    out = subprocess.run(shlex.split(build), cwd=REPO, capture_output=True, text=True, timeout=600,
                         env=clean_env())
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    wheels = sorted((REPO / ".gpu-wheels").glob("*.whl"))
    names = {re.sub(r"[-_.]+", "-", w.name.split("-")[0]).lower() for w in wheels}
    assert names == CARRIED and len(wheels) == len(CARRIED)
    assert sum(w.stat().st_size for w in wheels) < 60 * 2**20
    assert any("cp312" in w.name for w in wheels)             # the image's Python, not this one's
    assert out.stdout.rstrip().splitlines()[-1] == readme_gpu_block()[1]
