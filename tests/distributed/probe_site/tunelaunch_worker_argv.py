"""Test-only, import-free (the sitecustomize files import it at every Python start): which config a process
started as `python ... -m launcher.worker CONFIG` runs, read from its command line."""
import sys


def worker_config():
    """CONFIG when this process is `python ... -m launcher.worker CONFIG`, else None."""
    argv = list(getattr(sys, "orig_argv", []))[1:]  # the interpreter's own arguments, then the program's
    while argv:
        arg = argv.pop(0)
        if arg in ("-X", "-W", "--check-hash-based-pycs"):
            argv[:1] = []  # an option's value
        elif arg.startswith("-m"):
            module = arg[2:] or (argv.pop(0) if argv else "")
            return argv[0] if module == "launcher.worker" and argv else None
        elif arg in ("-c", "-") or not arg.startswith("-"):
            return None  # the program is something else: -c, a script, stdin
    return None
