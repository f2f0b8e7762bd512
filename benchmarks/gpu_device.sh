#!/usr/bin/env bash
# On the GPU machine, from the repo root: install the wheels benchmarks/gpu_wheels.sh carried, record the versions
# the run ends up with, then run benchmarks/gpu.py with its results written into OUT_DIR after every row.
#
#   bash benchmarks/gpu_device.sh WHEELS_DIR OUT_DIR [gpu.py arguments...]
#
# That machine reaches no package registry: the install is --no-index from WHEELS_DIR alone, and PIP_NO_INDEX=1 is
# exported so that no pip started later (by gpu.py or the product) reaches for one either and waits on the network.
# The wheels go into their own folder (GPU_SITE, default /tmp/site) put first on PYTHONPATH; they hold only packages
# the image lacks, so none of the image's own is shadowed. The repo itself comes next on PYTHONPATH: tunelaunch runs
# from this checkout (launcher/__init__.py finds conf/ and recipes/ beside the package), not from a wheel.
# PYTHON (default python3) is the interpreter: the image's, which holds its CUDA torch.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${1:?usage: gpu_device.sh WHEELS_DIR OUT_DIR [gpu.py arguments...]}
OUT_DIR=${2:?usage: gpu_device.sh WHEELS_DIR OUT_DIR [gpu.py arguments...]}
shift 2
PY=${PYTHON:-python3}
SITE=${GPU_SITE:-/tmp/site}
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
mkdir -p "$OUT_DIR"

# --upgrade: a rerun on a machine still warm replaces what the last run put there instead of skipping it.
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
export PYTHONPATH="$SITE:$PWD"

# Versions, and each carried wheel's requirements that the image does not meet (the install took no dependencies,
# so this is where a too-old image package would show). A failed import is written down, not fatal: the
# benchmark's rows say what they could not run.
"$PY" - <<'EOF' 2>&1 | tee "$OUT_DIR/versions.txt"
import importlib, importlib.metadata as md, os, platform, sys
from pathlib import Path

print(f"python {platform.python_version()} ({sys.executable})")
for module, dist in [("torch", "torch"), ("transformers", "transformers"), ("trl", "trl"), ("datasets", "datasets"),
                     ("peft", "peft"), ("accelerate", "accelerate"), ("deepspeed", "deepspeed"),
                     ("liger_kernel", "liger-kernel"), ("bitsandbytes", "bitsandbytes"), ("hydra", "hydra-core")]:
    try:
        importlib.import_module(module)
        print(f"{module} {md.version(dist)}")
    except Exception as e:
        print(f"{module} does not import: {type(e).__name__}: {' '.join(str(e).split())[:300]}")
try:
    import torch
    print("cuda device:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (no CUDA device)")
except Exception as e:
    print(f"cuda device: unknown ({type(e).__name__}: {e})")

from packaging.requirements import Requirement
site = Path(os.environ["PYTHONPATH"].split(os.pathsep)[0])
unmet = []
for dist in md.distributions(path=[str(site)]):
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        try:
            have = md.version(req.name)
        except md.PackageNotFoundError:
            unmet.append(f"{dist.metadata['Name']} needs {req} (not installed)")
            continue
        if req.specifier and not req.specifier.contains(have, prereleases=True):
            unmet.append(f"{dist.metadata['Name']} needs {req} (installed: {have})")
print("requirements of the carried wheels not met here:", "; ".join(unmet) if unmet else "none")
EOF

PYTHONUNBUFFERED=1 "$PY" benchmarks/gpu.py --results "$OUT_DIR" "$@"
