"""`tunelaunch export RUN_DIR [--format gguf|safetensors] [--dtype ...] [--output PATH]`.

Exit codes: 0 written; 2 bad input, found before any weight loads (no model, an architecture or tokenizer GGUF
cannot hold, an existing output); 1 the export itself failed. The standard library only at the top: the CLI
builds every subcommand's parser when it starts.
"""
from __future__ import annotations

import sys
from pathlib import Path

FORMATS = ("gguf", "safetensors")


def add_arguments(parser) -> None:
    parser.add_argument("run_dir", help="a finished run folder (its LoRA adapter is merged first), or a model folder")
    parser.add_argument("--format", choices=FORMATS, default="gguf",
                        help="gguf: one file for llama.cpp, Ollama, LM Studio (default); safetensors: the merged "
                             "model folder alone, for vLLM and TGI")
    parser.add_argument("--dtype", choices=("f32", "f16", "bf16", "q8_0"),
                        help="weight type; gguf: f32, f16 (default), bf16 or q8_0 (8-bit); safetensors: f32, f16 or "
                             "bf16 (default: as the model was saved)")
    parser.add_argument("--output", help="the file (gguf) or new folder (safetensors) to write; default "
                                         "RUN_DIR/export/<run name>-<dtype>.gguf or RUN_DIR/export/safetensors. "
                                         "An existing one is never overwritten")


def default_output(run_dir: Path, fmt: str, dtype: str | None) -> Path:
    export_dir = run_dir / "export"
    if fmt == "gguf":
        return export_dir / f"{run_dir.resolve().name}-{dtype}.gguf"
    return export_dir / "safetensors"


def _check_output(output: Path, fmt: str) -> None:
    from launcher.export.source import ExportInputError

    if output.exists():
        raise ExportInputError(f"{output} exists and is never overwritten: delete it, or pass --output with a new "
                               f"{'file' if fmt == 'gguf' else 'folder'} name")
    if fmt == "gguf" and output.suffix != ".gguf":
        raise ExportInputError(f"--output {output}: a GGUF file's name ends in .gguf (llama.cpp and transformers "
                               f"look for it)")


def _prepare(args):
    """Every check that needs no weights: (source, tokenizer plan or None, dtype, output). ExportInputError."""
    from launcher.export import gguf_plan, safetensors_folder
    from launcher.export.source import ExportInputError, find_source

    allowed = gguf_plan.DTYPES if args.format == "gguf" else safetensors_folder.DTYPES
    if args.dtype is not None and args.dtype not in allowed:
        raise ExportInputError(f"--dtype {args.dtype} does not apply to --format {args.format}; choose one of "
                               f"{', '.join(allowed)}")
    dtype = args.dtype or ("f16" if args.format == "gguf" else None)
    source = find_source(args.run_dir)
    plan = gguf_plan.check_gguf_exportable(source) if args.format == "gguf" else None
    output = Path(args.output) if args.output else default_output(Path(args.run_dir), args.format, dtype)
    _check_output(output, args.format)
    return source, plan, dtype, output


def main(args) -> int:
    from launcher.config.errors import EXIT_CONFIG
    from launcher.export.source import ExportInputError, load_merged

    try:
        source, plan, dtype, output = _prepare(args)
    except ExportInputError as err:
        print(f"export: {err}", file=sys.stderr)
        return EXIT_CONFIG
    merged = "with its adapter merged" if source.adapter_base else "full fine-tune"
    print(f"exporting {source.folder} ({source.architecture}, {merged}) as {args.format}"
          f"{' ' + dtype if dtype else ''} to {output}", flush=True)
    try:
        model, tokenizer = load_merged(source)
        output.parent.mkdir(parents=True, exist_ok=True)
        if args.format == "gguf":
            from launcher.export.gguf_write import write_gguf

            write_gguf(model, tokenizer, source.folder, plan, dtype, output, name=Path(args.run_dir).resolve().name)
        else:
            from launcher.export.safetensors_folder import write_folder

            write_folder(model, tokenizer, source.folder, dtype, output)
    except Exception as err:  # loading or writing failed after the checks: nothing half-written is left
        print(f"export failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    print(f"written: {output}")
    if args.format == "gguf":
        from launcher.export.gguf_plan import rope_type

        if rope_type(source.config) == "llama3":
            print("  note: llama.cpp reads this model's Llama 3 RoPE scaling (rope_freqs); transformers' GGUF loader "
                  "ignores it, so load the safetensors export into transformers instead")
        print(f"  llama.cpp: llama-cli -m {output}\n"
              f"  transformers: AutoModelForCausalLM.from_pretrained('{output.parent}', gguf_file='{output.name}')")
    else:
        print(f"  vLLM: vllm serve {output}")
    return 0
