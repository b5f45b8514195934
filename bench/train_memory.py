"""Peak memory and speed of the demo's training step under kpod's memory options.

Each variant trains the default run's student on its examples (configs/default.yaml: SmolLM2-135M-Instruct, its
LoRA, batch 8, the 337 kept SVAMP GPT-3.5 rationales) with the plain distillation loss (KPOD's adds per-token
weights of the same shape) for a few optimiser steps in a process of its own, so that
its peak resident memory (the kernel's high-water mark) is its own. Reported: resident memory once the model and
data are loaded, the peak over training, and the time per step and tokens per second (non-pad tokens).
Length-grouped batches (the default) put the longest batch first, so a few steps reach the peak.

    python bench/train_memory.py --steps 16          # writes results/train_memory.{json,md}
    python bench/train_memory.py --steps 6 --variants default gradient_checkpointing
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

VARIANTS = {  # TrainConfig overrides on top of configs/default.yaml's train section
    "default": {},
    "gradient_checkpointing": {"gradient_checkpointing": True},
    "batch 4 x 2 accumulated": {"batch_size": 4, "grad_accum": 2},  # the same examples per optimiser step
    "batch 2 x 4 accumulated": {"batch_size": 2, "grad_accum": 4},
    "packing": {"packing": True, "group_by_length": False},
}


def measure_one(variant: str, steps: int) -> dict:
    """Train `steps` optimiser steps with one variant in this process; returns its numbers."""
    import torch

    from kpod.config import load_config
    from kpod.distill.dataset import DistillDataset
    from kpod.distill.trainer import build_trainer, current_rss_mb, peak_rss_mb
    from kpod.models import add_lora, load_student
    from kpod.pipeline import collect_rationales, encode_for

    cfg = load_config(ROOT / "configs" / "default.yaml")
    train_cfg = cfg.train.model_copy(update={**VARIANTS[variant], "save_steps": 10_000, "logging_steps": 10_000})
    torch.manual_seed(cfg.seed)
    model, tok = load_student(cfg.student.name)
    lo = cfg.student.lora
    model = add_lora(model, lo.rank, lo.alpha, lo.dropout, lo.targets)
    questions, rationales, _ = collect_rationales(cfg)  # the demo's training examples, as its data stage keeps them
    examples, _ = encode_for(cfg, tok, {q.id: q for q in questions}, rationales, progress=False)
    loaded = current_rss_mb()
    with tempfile.TemporaryDirectory() as out:
        trainer = build_trainer(model, tok, DistillDataset(examples), train_cfg, Path(out), cfg.seed)
        trainer.args.max_steps = steps
        trainer.args.save_strategy = "no"
        started = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - started
    return {"variant": variant, "overrides": VARIANTS[variant], "steps": trainer.state.global_step,
            "examples_per_step": train_cfg.batch_size * train_cfg.grad_accum, "tokens": trainer.tokens_seen,
            "wall_s": round(wall, 1), "s_per_step": round(wall / max(1, trainer.state.global_step), 2),
            "tokens_per_s": round(trainer.tokens_seen / wall, 1), "rss_loaded_mb": loaded,
            "peak_rss_mb": round(peak_rss_mb(), 1), "final_loss": trainer.state.log_history[-1].get("train_loss")}


def write(rows: list[dict], meta: dict, out: Path) -> None:
    from kpod.experiment.report import machine_label

    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({**meta, "rows": rows}, indent=1))
    base = rows[0]
    md = ["# Peak memory of the demo's training step", "",
          f"`python bench/train_memory.py --steps {meta['steps']}`: configs/default.yaml's student, LoRA and "
          "batch, SVAMP GPT-3.5 examples, each variant in its own process. Loaded: resident memory with the model and "
          "data loaded, before training; peak: the process's high-water mark over training. Tokens: non-pad tokens "
          "through the model.", "",
          "| variant | train.* overrides | steps | examples/step | loaded (MB) | peak (MB) | peak − loaded (MB) | s/step "
          "| tokens/s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        overrides = ", ".join(f"{k} {v}" for k, v in r["overrides"].items()) or "–"
        md.append(f"| {r['variant']} | {overrides} | {r['steps']} | {r['examples_per_step']} | {r['rss_loaded_mb']:.0f} | "
                  f"{r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] - r['rss_loaded_mb']:.0f} | {r['s_per_step']} | "
                  f"{r['tokens_per_s']} |")
    if base["variant"] == "default":
        md += ["", "Against the default: " + "; ".join(
            f"{r['variant']} {100 * (r['peak_rss_mb'] / base['peak_rss_mb'] - 1):+.0f} % peak memory, "
            f"{100 * (r['tokens_per_s'] / base['tokens_per_s'] - 1):+.0f} % tokens/s" for r in rows[1:]) + "."]
    md += ["", "Packing draws random batches (group_by_length off), so its batches hold other examples than the rest.",
           "", f"Machine: {machine_label(meta['machine'])}; commit {meta['commit']}.", ""]
    out.with_suffix(".md").write_text("\n".join(md))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="optimiser steps per variant")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", default=str(ROOT / "results" / "train_memory"))
    parser.add_argument("--one", choices=list(VARIANTS), help=argparse.SUPPRESS)  # a child process's variant
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(args.one, args.steps)), flush=True)
        return
    from kpod.evaluation.evaluate import git_commit, machine

    rows = []
    for variant in args.variants:
        child = subprocess.run([sys.executable, __file__, "--one", variant, "--steps", str(args.steps)],
                               capture_output=True, text=True, env=dict(os.environ))
        if child.returncode != 0:
            raise RuntimeError(f"variant {variant!r} failed:\n{child.stderr[-3000:]}")
        rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
        write(rows, {"machine": machine(), "commit": git_commit(), "steps": args.steps}, Path(args.out))


if __name__ == "__main__":
    main()
