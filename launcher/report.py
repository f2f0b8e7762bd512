"""What `plan` prints: the decisions, every adjustment, the resolved configuration and the launch command."""
from __future__ import annotations

import yaml

from launcher.data.mixture import describe as describe_data
from launcher.distributed.launch import node_command, render
from launcher.planning import Plan
from launcher.run_dir import redacted_dict


def memory_line(plan: Plan) -> str:
    """The estimate against the GPU memory."""
    res, hw = plan.resolution, plan.hardware
    est = res.estimate
    if est is None:
        return f"no estimate ({res.estimate_missing or 'unknown model'})"
    if not hw.gpus or not hw.gpu_memory_gib:
        return f"{est.describe('process')}; no GPU here to compare with"
    verdict = "fits" if est.fits(hw.gpu_memory_gib) else "does NOT fit"
    return f"{est.describe()} vs {hw.gpu_memory_gib:g} GiB per GPU: {verdict} (limit {est.usable_fraction:.0%})"


def render_plan(plan: Plan, brief: bool = False, show_config: bool = False) -> str:
    """The plan: its decisions, notes and blockers (brief: only those), then how it launches; `show_config` adds
    the whole resolved configuration (`plan --show-config`: ~130 lines that bury the decisions by default)."""
    cfg, data = plan.cfg, plan.data
    d = cfg.distributed
    rows = [
        ("run", str(plan.run_dir)),
        ("trainer", cfg.trainer.name + (f" (LoRA r={cfg.peft.r}" + (
            f", {cfg.quantization.mode} base" if cfg.quantization.mode != "none" else "") + ")"
            if cfg.peft.enabled else " (full fine-tune)")),
        ("model", cfg.model.name_or_path + (f" [{cfg.model.gguf_file}]" if cfg.model.gguf_file else "")),
        ("data", f"{describe_data(cfg)}: {data.format or 'checked at load'}, "
                 + (f"streamed (its first {len(data.train.rows) if data.train else 0} rows checked), "
                    if cfg.data.streaming else f"{len(data.train.rows) if data.train else 0} train rows, ")
                 + f"{len(data.valid.rows) if data.valid else 0} validation rows, template {cfg.data.chat_template}"),
        ("hardware", plan.hardware.kind),
        ("launch", f"{d.backend} ({plan.resolution.backend_reason}); {d.num_processes} process(es) x "
                   f"{d.num_nodes} node(s) = world size {plan.world_size}, via {d.launcher}"),
        ("precision", f"{cfg.precision.mixed_precision}, attention {cfg.model.attn_implementation}, "
                      f"gradient checkpointing {'on' if cfg.training.gradient_checkpointing else 'off'}"),
        ("memory", memory_line(plan)),
    ]
    out = ["Plan (valid):"] + [f"  {k:10s} {v}" for k, v in rows]
    if plan.notes:
        out += ["", "Adjustments and notes:"] + [f"  - {n}" for n in plan.notes]
    if plan.blockers:
        out += ["", "Before `train` can run:"] + [f"  - {b}" for b in plan.blockers]
    if brief:
        return "\n".join(out)
    if show_config:
        out += ["", "Resolved configuration (secrets redacted):",
                "  " + yaml.safe_dump(redacted_dict(cfg), sort_keys=False).rstrip().replace("\n", "\n  ")]
    if cfg.cluster.kind == "slurm":
        from launcher.cluster.submit import node_commands

        out += ["", "Launch (Slurm): `tunelaunch submit` writes job.sbatch and submits it (`submit --dry-run` prints "
                "it); in the job each node runs:"] + [f"  {line}" for line in node_commands(cfg, plan.run_dir)]
        return "\n".join(out)
    out += ["", "Launch command" + (" per node:" if d.num_nodes > 1 else ":")]
    if d.num_nodes > 1:
        for rank in range(d.num_nodes):
            out.append(f"  node {rank}: {render(node_command(cfg, plan.run_dir, node_rank=rank))}")
    else:
        out.append("  " + render(node_command(cfg, plan.run_dir)))
    return "\n".join(out)
