"""Training throughput and memory per student and fine-tuning mode on this machine's device (a GPU where there is one),
and the wall time of each KPOD stage of a full run there.

Part 1, for each student and mode (LoRA r16 on every linear layer, or full fine-tuning): a few optimiser steps of
kpod's distillation trainer on the SVAMP GPT-3.5 examples; tokens/s, s/step and peak memory (GPU: the allocator's
peak; CPU: the process's peak RSS). Part 2: `kpod run` of a config on the device (default: configs/default.yaml),
with each stage's wall time (weighting, difficulty, clusters, schedule, each epoch, evaluation) and peak memory.

    python bench/device_scaling.py --students smollm2-135m-instruct /models/llama-7b --modes lora full
    python bench/device_scaling.py --steps 2 --students smollm2-135m-instruct --modes lora --run-overrides \\
        data.max_train_questions=16 train.epochs=1 eval.max_examples=8 kpod.weighting.max_steps=2   # a smoke test

Writes results/device_scaling.{json,md} (`--out` to change), naming the device.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from kpod.config import TrainConfig, load_config  # noqa: E402
from kpod.data.datasets import load_split  # noqa: E402
from kpod.data.rationales import import_rationales  # noqa: E402
from kpod.distill.dataset import DistillDataset  # noqa: E402
from kpod.distill.examples import encode_examples  # noqa: E402
from kpod.distill.trainer import build_trainer, peak_rss_mb  # noqa: E402
from kpod.evaluation.evaluate import git_commit, machine  # noqa: E402
from kpod.models import add_lora, load_student  # noqa: E402
from kpod.pipeline import Pipeline  # noqa: E402


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return peak_rss_mb()


def train_throughput(student: str, mode: str, steps: int, batch_size: int, precision: str, work: Path) -> dict:
    model, tok = load_student(student)
    if mode == "lora":
        model = add_lora(model, 16, 32, 0.05, "all-linear")
    questions = {q.id: q for q in load_split("svamp", "train")}
    rationales = [r for r in import_rationales("svamp", "gpt35")[0] if r.sample == 0]
    examples, _ = encode_examples(tok, questions, rationales, max_length=384, progress=False)
    cfg = TrainConfig(epochs=1, batch_size=batch_size, lr=2e-4 if mode == "lora" else 2e-5, warmup_steps=0,
                      save_steps=10_000, logging_steps=10_000, precision=precision)
    trainer = build_trainer(model, tok, DistillDataset(examples), cfg, work / f"{mode}", seed=0)
    trainer.args.max_steps, trainer.args.save_strategy = steps, "no"
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    return {"student": student, "mode": mode, "steps": steps, "batch_size": batch_size, "precision": precision,
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "tokens": trainer.tokens_seen, "wall_s": round(wall, 1), "s_per_step": round(wall / steps, 3),
            "tokens_per_s": round(trainer.tokens_seen / wall, 1), "peak_memory_mb": peak_memory_mb()}


def kpod_stage_times(config: str, overrides: dict, work: Path) -> dict:
    cfg = load_config(config, {**overrides, "run_dir": str(work / "run")})
    pipe = Pipeline(cfg, progress=False)
    t0 = time.perf_counter()
    summary = pipe.run()
    train_summary = json.loads((work / "run" / "train" / "summary.json").read_text())
    return {"config": os.path.relpath(config, ROOT), "overrides": overrides, "wall_s": round(time.perf_counter() - t0, 1),
            "stage_s": {k: round(v, 1) for k, v in summary["timings_s"].items()},
            "epochs": train_summary.get("epoch_log"), "peak_memory_mb": peak_memory_mb(),
            "accuracy": {r["dataset"] + "-" + r["split"]: r["accuracy"] for r in summary["results"]}}


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value)  # numbers, true/false/null, lists
        except json.JSONDecodeError:
            out[key] = value  # a plain string
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--students", nargs="+", default=["smollm2-135m-instruct"])
    ap.add_argument("--modes", nargs="+", default=["lora", "full"], choices=["lora", "full"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--precision", default="bf16" if torch.cuda.is_available() else "fp32")
    ap.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"), help="config of the KPOD stage run")
    ap.add_argument("--run-overrides", nargs="*", default=[], help="dotted overrides for that run, key=value")
    ap.add_argument("--no-run", action="store_true", help="skip the KPOD stage run")
    ap.add_argument("--out", default=str(ROOT / "results" / "device_scaling"))
    a = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="kpod-device-"))
    rows = []
    for student in a.students:
        for mode in a.modes:
            rows.append(train_throughput(student, mode, a.steps, a.batch_size, a.precision, work / student.replace("/", "_")))
            print(json.dumps(rows[-1]), flush=True)
    stages = None if a.no_run else kpod_stage_times(a.config, parse_overrides(a.run_overrides), work)
    result = {"benchmark": "training throughput and memory per student and mode; KPOD stage times",
              "machine": machine(), "commit": git_commit(), "throughput": rows, "kpod_run": stages}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out + ".json").write_text(json.dumps(result, indent=1))
    device = result["machine"]["gpu"] or f"CPU ({result['machine']['cpu']}, {result['machine']['cores']} cores)"
    md = [f"# Training throughput and KPOD stage times on {device}", "",
          f"torch {result['machine']['torch']}, commit {result['commit']}.", "",
          "| student | mode | trainable params | batch | precision | s/step | tokens/s | peak memory (MB) |",
          "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['student']} | {r['mode']} | {r['trainable_params']:,} | {r['batch_size']} | {r['precision']} | "
                  f"{r['s_per_step']} | {r['tokens_per_s']} | {r['peak_memory_mb']} |")
    if stages:
        md += ["", f"KPOD run `{stages['config']}` {stages['overrides'] or ''}: {stages['wall_s']} s in all, "
               f"peak memory {stages['peak_memory_mb']} MB, accuracy {stages['accuracy']}.", "",
               "| stage | wall (s) |", "|---|---|"]
        md += [f"| {k} | {v} |" for k, v in stages["stage_s"].items()]
        md += [f"| epoch {round(e['epoch'])} | {e['wall_s']} |" for e in stages["epochs"] or []]
    Path(a.out + ".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
