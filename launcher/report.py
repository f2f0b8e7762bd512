"""What `plan` prints: the decisions, every adjustment, the resolved configuration and the launch command."""
from __future__ import annotations

import yaml

from launcher.distributed.launch import launch_command, memory_line, render
from launcher.planning import Plan
from launcher.run_dir import redacted_dict


def render_plan(plan: Plan, brief: bool = False) -> str:
    cfg, launch, data = plan.cfg, plan.launch, plan.data
    rows = [
        ("run", str(plan.run_dir)),
        ("trainer", cfg.trainer.name + (f" (LoRA r={cfg.peft.r}" + (
            f", {cfg.quantization.mode} base" if cfg.quantization.mode != "none" else "") + ")"
            if cfg.peft.enabled else " (full fine-tune)")),
        ("model", cfg.model.name_or_path + (f" [{cfg.model.gguf_file}]" if cfg.model.gguf_file else "")),
        ("data", f"{cfg.data.path}: {data.format or 'checked at load'}, "
                 f"{len(data.train.rows) if data.train else 0} train rows, "
                 f"{len(data.valid.rows) if data.valid else 0} validation rows, template {cfg.data.chat_template}"),
        ("hardware", plan.hardware.kind),
        ("launch", f"{launch.backend} ({launch.reason}); {launch.processes_per_node} process(es) x "
                   f"{launch.num_nodes} node(s) = world size {launch.world_size}, via {launch.launcher}"),
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
    out += ["", "Resolved configuration (secrets redacted):",
            "  " + yaml.safe_dump(redacted_dict(cfg), sort_keys=False).rstrip().replace("\n", "\n  ")]
    out += ["", "Launch command" + (" per node:" if launch.num_nodes > 1 else ":")]
    if launch.num_nodes > 1:
        for rank in range(launch.num_nodes):
            out.append(f"  node {rank}: {render(launch_command(cfg, launch, plan.run_dir, node_rank=rank))}")
    else:
        out.append("  " + render(launch_command(cfg, launch, plan.run_dir)))
    return "\n".join(out)
