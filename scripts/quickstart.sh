#!/usr/bin/env bash
# Sets up, then fine-tunes the real SmolLM2-135M-Instruct with LoRA on pirate-voiced chat (recipes/sft/quickstart.yaml),
# on CPU in a few minutes, and prompts it with held-out questions before and after.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
MODEL=$(python -m launcher.embedded smollm2)   # converts the shipped GGUF once (~25 s), then cached
ask() { for q in "What is the capital of France?" "What is the capital of Chile?"; do
          printf '  Q: %s\n  A: %s\n' "$q" "$(tunelaunch generate "$1" --prompt "$q" --template chatml 2>/dev/null)"; done; }
echo "== before fine-tuning"
ask "$MODEL"
tunelaunch train recipe=sft/quickstart overwrite=true
echo "== after fine-tuning (runs/quickstart-pirate)"
ask runs/quickstart-pirate
