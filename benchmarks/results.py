"""benchmarks/RESULTS.md, written one section at a time: each script owns the sections it names and replaces only
those, between `<!-- section: NAME -->` and `<!-- end: NAME -->` (a section not there yet is appended), so the
scripts can run in any order and a rerun of one keeps the others' figures.

Every section starts with a line saying when, on what machine and with which package versions it was measured.
Scripts write only in their full mode: a `--quick` run prints its tables and leaves RESULTS.md alone (unless it
is given `--write`, which then marks the section "quick run").
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
PREAMBLE = ("# Benchmark results\n\nEach section is written by the script it names (`python benchmarks/<name>.py`); "
            "see benchmarks/results.py. Targets from issue #11 stand beside the figures they judge.\n")
PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions(names: tuple = PACKAGES) -> str:
    out = []
    for name in names:
        try:
            out.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(f"{name} not installed")
    return ", ".join(out)


def header(quick: bool = False) -> str:
    """One line: date, machine (CPU model, cores, torch threads), package versions, full or quick run."""
    try:
        import torch

        threads = f"torch threads {torch.get_num_threads()}"
    except ImportError:
        threads = "no torch"
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    omp = os.environ.get("OMP_NUM_THREADS")
    return (f"_{when} · {cpu_model()}, {os.cpu_count()} cores, {threads}"
            f"{f', OMP_NUM_THREADS={omp}' if omp else ''} · {versions()} · "
            f"{'QUICK run (not figures to quote)' if quick else 'full run'}_")


def verdict(ok: bool) -> str:
    return "met" if ok else "missed"


def table(columns: list[str], rows: list[list]) -> list[str]:
    """A Markdown table (cells converted with str; a '|' inside a cell is escaped)."""
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return [line(columns), "| " + " | ".join("---" for _ in columns) + " |", *(line(r) for r in rows)]


def render(name: str, title: str, body: list[str], quick: bool = False, header_line: bool = True) -> str:
    """A section with its markers; `header_line=False` when the body starts with its own (the GPU benchmark's
    names the GPU, not this machine's CPU)."""
    head = [header(quick), ""] if header_line else []
    return "\n".join([f"<!-- section: {name} -->", f"## {title}", "", *head, *body, "",
                      f"<!-- end: {name} -->"]) + "\n"


def write_section(name: str, title: str, body: list[str], quick: bool = False, path: Path = RESULTS) -> Path:
    """Replace section NAME of the results file (append it when absent); every other byte stays as it was."""
    return replace_section(name, render(name, title, body, quick), path)


def replace_section(name: str, text: str, path: Path = RESULTS) -> Path:
    """Put TEXT (a whole section, markers included) in place of section NAME, or append it when absent."""
    old = path.read_text(encoding="utf-8") if path.exists() else PREAMBLE
    pattern = re.compile(rf"<!-- section: {re.escape(name)} -->\n.*?<!-- end: {re.escape(name)} -->\n?", re.S)
    if pattern.search(old):
        new = pattern.sub(lambda _: text, old, count=1)
    else:
        new = old.rstrip("\n") + "\n\n" + text
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(new, encoding="utf-8")
    os.replace(tmp, path)
    return path


SECTION_FILE = re.compile(r"\A\s*<!-- section: ([\w.-]+) -->\n.*<!-- end: \1 -->\s*\Z", re.S)


def merge(section_file: Path, path: Path = RESULTS) -> str:
    """A section written elsewhere (benchmarks/gpu.py's DIR/gpu.md, brought back from the GPU machine) put into
    the results file in place of the section of the same name: a rerun replaces, never duplicates. Returns the
    section's name; a file that is not one whole section is refused, naming it."""
    text = section_file.read_text(encoding="utf-8")
    found = SECTION_FILE.match(text)
    if not found:
        raise ValueError(f"{section_file}: not one section between '<!-- section: NAME -->' and "
                         "'<!-- end: NAME -->' (write it with benchmarks/gpu.py --results DIR)")
    replace_section(found.group(1), text.strip() + "\n", path)
    return found.group(1)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="benchmarks/RESULTS.md's sections")
    sub = parser.add_subparsers(dest="verb", required=True)
    put = sub.add_parser("merge", help="put a section file (e.g. DIR/gpu.md from benchmarks/gpu.py) into "
                                       "RESULTS.md, replacing the section of the same name")
    put.add_argument("file", type=Path)
    put.add_argument("--results", type=Path, default=RESULTS, help="the results file (default %(default)s)")
    args = parser.parse_args(argv)
    try:
        name = merge(args.file, args.results)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"section '{name}' of {args.results} replaced by {args.file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


def add_arguments(parser) -> None:
    """--quick / --write / --results, the same in every CPU benchmark script."""
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and a tiny model: checks the script in a minute or two; prints only")
    parser.add_argument("--write", action="store_true", help="write RESULTS.md even after --quick")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the results file (default %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the measurements to this JSON file (for the tests)")


def publish(args, name: str, title: str, body: list[str]) -> None:
    """Print a section; write it unless this was a --quick run without --write."""
    print(f"\n## {title}\n")
    print("\n".join(body))
    if args.quick and not args.write:
        print(f"\n(--quick: {args.results.name} not written)")
        return
    write_section(name, title, body, quick=args.quick, path=args.results)
    print(f"\nwritten: section '{name}' of {args.results}")


def dump(args, figures: dict) -> None:
    """--json FILE: the measurements as JSON (tuple keys joined with '/'), which tests/benchmarks reads."""
    if not getattr(args, "json", None):
        return

    def plain(value):
        if isinstance(value, dict):
            return {"/".join(map(str, k)) if isinstance(k, tuple) else str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    args.json.write_text(json.dumps(plain(figures), indent=1, default=str))
