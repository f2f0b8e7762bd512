"""`python -m launcher ...` is the `tunelaunch` command. It is how launchers start it on every rank:
`torchrun --nproc_per_node 8 -m launcher train ...`, `accelerate launch -m launcher train ...`."""
import sys

from launcher.cli import main

if __name__ == "__main__":
    sys.exit(main())
