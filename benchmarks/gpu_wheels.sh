#!/usr/bin/env bash
# The wheels a GPU run of benchmarks/gpu.py needs that the GPU machines' image lacks, in one folder that travels with
# the working tree (the machine reaches no package registry, so whatever is missing there must be carried).
#
#   bash benchmarks/gpu_wheels.sh [DIR]          # download/build into DIR (default .gpu-wheels/ at the repo root)
#   bash benchmarks/gpu_wheels.sh --list [DIR]   # print name==version of each wheel and the device command; no download
#   GPU_WHEELS_PYTHON=3.11 bash benchmarks/gpu_wheels.sh DIR   # the same content for another CPython (the image's
#                                                # is 3.12; the CPU rehearsal, tests/benchmarks/test_gpu_wheels.py,
#                                                # uses 3.11)
#
# Versions are those of the repo's .venv (read with importlib.metadata), so the GPU run uses what the test suite
# tested. The image (Python 3.12, torch 2.11, transformers 5.17, accelerate 1.15, huggingface_hub 1.33, peft,
# pyarrow, pandas, fsspec, xxhash, psutil, msgpack, py-cpuinfo, ninja, einops, typing-extensions, triton, ...) keeps
# its own copies of everything else: only what it lacks is carried, so nothing it has is shadowed.
#
# tunelaunch itself is not carried as a wheel: launcher/__init__.py finds conf/ and recipes/ beside the package
# (REPO_ROOT), so the GPU run imports the carried checkout itself through PYTHONPATH=$PWD (benchmarks/gpu_device.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

LIST=0
if [ "${1:-}" = "--list" ]; then LIST=1; shift; fi
DIR=${1:-.gpu-wheels}
PYVER=${GPU_WHEELS_PYTHON:-3.12}
VENV_PY=${GPU_WHEELS_VENV_PYTHON:-$REPO/.venv/bin/python}
# The device tool carries 64 MiB in all; the tree itself is a few MiB, so the wheels get the rest less a margin.
MAX_MIB=${GPU_WHEELS_MAX_MIB:-60}

# What the image lacks, with who needs it (pyproject.toml's dependencies and extras, then each carried wheel's
# Requires-Dist without `extra ==` lines, checked against the image's package list):
PACKAGES=(
    trl                       # product dependency
    datasets                  # product dependency (and trl's)
    dill                      # datasets
    multiprocess              # datasets
    hydra-core                # product dependency
    omegaconf                 # product dependency (and hydra-core's)
    antlr4-python3-runtime    # omegaconf, hydra-core: PyPI has only its source, built here
    deepspeed                 # distributed=zero3: PyPI has only its source, built here without ops (JIT on the GPU)
    hjson                     # deepspeed
    pydantic                  # deepspeed
    pydantic-core             # pydantic
    annotated-types           # pydantic
    typing-inspection         # pydantic
    liger-kernel              # model.liger_kernel=true and gpu.py's Liger rows
    bitsandbytes              # peft=qlora (4-bit base)
)
# Built here with `pip wheel`: PyPI has no wheel of these.
SOURCE_ONLY=" antlr4-python3-runtime deepspeed "
# Not in .venv (liger-kernel is no dependency or extra of the product): 0.8.5 is the newest release, made after
# torch 2.11 and transformers 5.17; it asks for torch>=2.1.2 and triton>=2.3.1 (the image: 2.11 and 3.6), tests
# itself against transformers>=5 (its dev extra), and the rehearsal applies its Llama patch under transformers 5.17.
FIXED="liger-kernel==0.8.5"

[ -x "$VENV_PY" ] || { echo "gpu_wheels.sh: no $VENV_PY (run scripts/setup.sh first: the versions come from it)" >&2; exit 1; }

# name==version for each package: .venv's version, else the fixed pin above.
PIN_TEXT=$(FIXED="$FIXED" "$VENV_PY" - "${PACKAGES[@]}" <<'EOF'
import importlib.metadata as md, os, sys
fixed = dict(pin.split("==") for pin in os.environ["FIXED"].split())
missing = []
for name in sys.argv[1:]:
    try:
        version = md.version(name)
    except md.PackageNotFoundError:
        version = fixed.get(name)
    if version is None:
        missing.append(name)
    print(f"{name}=={version}")
if missing:
    sys.exit("gpu_wheels.sh: not installed in .venv, and no fixed version here: " + ", ".join(missing))
EOF
)
mapfile -t PINS <<<"$PIN_TEXT"

# The folder as the device sees it: a path inside the repo, relative to its root (only the repo's tree travels).
ABS_DIR=$(realpath -m "$DIR")
case "$ABS_DIR/" in
    "$REPO"/?*) REL_DIR=${ABS_DIR#"$REPO"/} ;;
    *) REL_DIR="" ;;
esac
device_command() {
    if [ -z "$REL_DIR" ]; then
        echo "(the folder $ABS_DIR is outside the repo: only the repo's tree travels to the GPU machine; use a folder inside it)"
        return
    fi
    # One line, run from the repo root there; `carry` must name the folder: /.gpu-wheels/ is git-ignored, and ignored
    # paths travel only when carried.
    echo "device command (carry: [\"$REL_DIR\"]):"
    echo "bash benchmarks/gpu_device.sh $REL_DIR \"\$OUT\""
}

if [ "$LIST" = 1 ]; then
    echo "wheels for CPython $PYVER, manylinux x86-64, into $DIR:"
    printf '  %s\n' "${PINS[@]}"
    device_command
    exit 0
fi

# Made in a scratch folder and checked there, so a failed run leaves DIR as it was.
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT

BINARY=() SOURCE=()
for pin in "${PINS[@]}"; do
    case "$SOURCE_ONLY" in
        *" ${pin%%==*} "*) SOURCE+=("$pin") ;;
        *) BINARY+=("$pin") ;;
    esac
done

# --no-deps: each dependency is named above (the image has the rest); --only-binary: nothing is compiled for the
# target, whose Python may not be the one running this.
"$VENV_PY" -m pip download -q --no-deps --only-binary=:all: -d "$STAGE" \
    --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_24_x86_64 \
    "${BINARY[@]}"

# Pure-Python source packages, built with .venv's own setuptools and torch (deepspeed's setup.py imports torch);
# DS_BUILD_OPS=0 builds no CUDA op ahead, so the wheel is py3-none-any and deepspeed compiles what it uses on the GPU.
DS_BUILD_OPS=0 "$VENV_PY" -m pip wheel -q --no-deps --no-build-isolation -w "$STAGE" "${SOURCE[@]}"

# Exactly one wheel per package, of the pinned version, and nothing else: two versions of one package stop the
# install on the device, and a wheel not listed would be carried unchecked.
"$VENV_PY" - "$STAGE" "$PYVER" "${PINS[@]}" <<'EOF'
import re, sys
from pathlib import Path
stage, pyver, pins = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
norm = lambda s: re.sub(r"[-_.]+", "_", s).lower()
files = sorted(p.name for p in stage.iterdir())
errors = [f"not a wheel: {f}" for f in files if not f.endswith(".whl")]
wheels = [f for f in files if f.endswith(".whl")]
seen = set()
for pin in pins:
    name, version = pin.split("==")
    mine = [w for w in wheels if norm(w.split("-")[0]) == norm(name)]
    seen.update(mine)
    if len(mine) != 1:
        errors.append(f"{name}: {len(mine)} wheels ({', '.join(mine) or 'none'}), expected 1")
    elif mine[0].split("-")[1] != version:
        errors.append(f"{name}: {mine[0]} is not version {version}")
for w in wheels:
    if w not in seen:
        errors.append(f"a wheel no package asked for: {w}")
for w in wheels:
    if norm(w.split("-")[0]) in ("deepspeed", "antlr4_python3_runtime") and not w.endswith("-py3-none-any.whl"):
        errors.append(f"{w}: expected a py3-none-any wheel (deepspeed built without ops)")
if errors:
    sys.exit("gpu_wheels.sh: " + "; ".join(errors))
EOF

TOTAL=$(du -cb "$STAGE"/*.whl | tail -1 | cut -f1)
MIB=$(awk -v b="$TOTAL" 'BEGIN { printf "%.1f", b / 1048576 }')
if [ "$TOTAL" -gt $((MAX_MIB * 1048576)) ]; then
    echo "gpu_wheels.sh: the wheels come to $MIB MiB, over the $MAX_MIB MiB that can travel with the working tree" \
         "(64 MiB in all, the tree included); carry fewer (bitsandbytes alone is ~41 MiB)" >&2
    exit 1
fi

# Replace DIR's wheels (only its wheels) by the checked set.
mkdir -p "$ABS_DIR"
rm -f "$ABS_DIR"/*.whl
mv "$STAGE"/*.whl "$ABS_DIR"/
echo "wheels for CPython $PYVER in $DIR:"
(cd "$ABS_DIR" && du -b ./*.whl | sort -k2 | awk '{ printf "  %8.1f KiB  %s\n", $1 / 1024, substr($2, 3) }')
echo "total: $MIB MiB in ${#PINS[@]} wheels (limit $MAX_MIB MiB)"
device_command
