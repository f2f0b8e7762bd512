"""tunelaunch: validate a fine-tuning run completely, then launch it on one box or many."""
from pathlib import Path

__version__ = "0.1.0"

# conf/ and recipes/ live beside the package (an editable install keeps them there).
REPO_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = REPO_ROOT / "conf"
RECIPES_DIR = REPO_ROOT / "recipes"
