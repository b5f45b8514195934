"""What the token weighting stage learns on the real training rationales (SVAMP by default), and what it costs against
one epoch of plain CoT distillation on the same examples, in one process on the same machine.

For each seed: train the weighting module with the config's `kpod.weighting` settings (default: 30 steps of 8
rationales against the frozen default student), weight every training rationale, summarise the mean weight per
token class. Then train the student for one epoch of plain distillation (the config's train settings, method
plain) on the same examples and time it. Seed 0's artefact is drawn (Figure-2-like HTML and PNG).

    python bench/weighting_cost.py configs/default.yaml --seeds 0 1 2   # results/weighting_cost.{json,md}
    KPOD_DATA_DIR=path/to/data python bench/weighting_cost.py --set data.dataset=gsm8k --no-plain \
        --out results/weighting_seeds_gsm8k   # the GSM8K grid's training set (ood-gsm8k-cpu.yaml)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from kpod.cli import parse_overrides  # noqa: E402
from kpod.config import load_config  # noqa: E402
from kpod.curriculum import stages as ks  # noqa: E402
from kpod.distill.dataset import DistillDataset  # noqa: E402
from kpod.distill.trainer import build_trainer, peak_rss_mb  # noqa: E402
from kpod.evaluation.evaluate import git_commit, machine  # noqa: E402
from kpod.models import add_lora, load_student  # noqa: E402
from kpod.pipeline import Pipeline  # noqa: E402
from kpod.weighting.summary import TOKEN_CLASSES  # noqa: E402


def plain_epoch_seconds(cfg, examples, work: Path) -> dict:
    model, tok = load_student(cfg.student.name)
    lora = cfg.student.lora
    model = add_lora(model, lora.rank, lora.alpha, lora.dropout, lora.targets)
    train = cfg.train.model_copy(update={"epochs": 1, "save_steps": 10_000, "method": "plain"})
    trainer = build_trainer(model, tok, DistillDataset(examples), train, work / "plain", cfg.seed)
    trainer.args.save_strategy = "no"
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    return {"wall_s": round(wall, 1), "steps": trainer.state.global_step, "tokens": trainer.tokens_seen,
            "s_per_step": round(wall / max(1, trainer.state.global_step), 2)}


def warmup_ends(losses: list[float], n: int = 5) -> list[float] | None:
    if not losses:
        return None
    return [round(sum(losses[:n]) / len(losses[:n]), 3), round(sum(losses[-n:]) / len(losses[-n:]), 3)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config", nargs="?", default=str(ROOT / "configs" / "default.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    ap.add_argument("--no-plain", action="store_true", help="skip the plain-epoch timing")
    ap.add_argument("--out", default=str(ROOT / "results" / "weighting_cost"))
    a = ap.parse_args()

    cfg = load_config(a.config, parse_overrides(a.set))
    work = Path(tempfile.mkdtemp(prefix="kpod-weighting-cost-"))
    cfg.run_dir = str(work / "run")
    pipe = Pipeline(cfg, progress=False)
    questions, rationales = pipe.stage_data()
    model, tok = load_student(cfg.student.name)
    examples = pipe.stage_encode(tok, questions, rationales)

    runs = []
    figure_dir = Path(a.out + "_figure")
    for seed in a.seeds:
        settings = cfg.kpod.model_copy(update={"weighting": cfg.kpod.weighting.model_copy(update={"seed": seed})})
        out_dir = work / f"weighting-seed{seed}"
        t0 = time.perf_counter()
        ks.run_weighting(tok, examples, questions, model, settings, out_dir, progress=False)
        wall = time.perf_counter() - t0
        stats = json.loads((out_dir / "stats.json").read_text())
        summary = json.loads((out_dir / "summary.json").read_text())
        runs.append({
            "seed": seed, "wall_s": round(wall, 1), "train_s": round(stats["train_seconds"], 1),
            "steps": stats["steps"], "warmup_steps": stats["warmup_steps"],
            "s_per_step": round(stats["train_seconds"] / (stats["steps"] + stats["warmup_steps"]), 2),
            "final_keep_ratio": round(stats["final_keep_ratio"], 3),
            # The predictor's answer loss on unmasked rationales, first and last five warm-up steps (none if frozen).
            "warmup_loss_first_last": warmup_ends(stats.get("warmup_loss", [])),
            "mean_weight": round(stats["mean_weight"], 4), "weight_std": round(stats["weight_std"], 4),
            "weights_nearly_constant": stats["weights_nearly_constant"],
            "classes": {c: summary["classes"][c] for c in TOKEN_CLASSES},
            "top_tokens": [t["token"] for t in summary["top_tokens"][:15]],
            "bottom_tokens": [t["token"] for t in summary["bottom_tokens"][:15]],
        })
        print(json.dumps(runs[-1]), flush=True)
        if seed == a.seeds[0]:
            figure_dir.mkdir(parents=True, exist_ok=True)
            for name in ("weights.html", "weights.png", "summary.json", "stats.json"):
                if (out_dir / name).exists():
                    shutil.copy(out_dir / name, figure_dir / name)

    plain = None if a.no_plain else plain_epoch_seconds(cfg, examples, work)
    result = {
        "benchmark": f"token weighting on the {cfg.data.dataset} training rationales"
                     + ("" if a.no_plain else " vs one plain distillation epoch"),
        "machine": machine(), "commit": git_commit(), "config": cfg.model_dump(mode="json", exclude={"run_dir"}),  # a temporary folder
        "examples": len(examples), "weighting": runs, "plain_epoch": plain,
        "peak_rss_mb": peak_rss_mb(),
        "load_average_at_end": os.getloadavg(),
    }
    Path(a.out + ".json").write_text(json.dumps(result, indent=1))

    md = [f"# Token weighting on {cfg.data.dataset}: what it learns" + ("" if a.no_plain else " and what it costs"), "",
          f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, "
          f"{result['machine']['torch_threads']} torch threads, torch {result['machine']['torch']}; "
          f"commit {result['commit']}; {len(examples)} training rationales; settings: "
          f"`{json.dumps(cfg.kpod.weighting.model_dump(include={'predictor_mode', 'predictor_warmup_steps', 'predictor_lr', 'num_prefix_lengths', 'answer_prefixes', 'mask_representation', 'gradient_estimator', 'lr', 'batch_size', 'max_steps', 'alpha', 'center_logits'}))}`; "
          f"closing answer statements cut from the rationales: {cfg.data.strip_answer_statement}.",
          "", "Mean weight per token class (count in brackets), one row per seed (`kpod.weighting.seed`):", "",
          "| seed | " + " | ".join(TOKEN_CLASSES) + " | mean weight | weight std | keep ratio | train s |",
          "|---|" + "---|" * (len(TOKEN_CLASSES) + 4)]
    for r in runs:
        cells = [f"{r['classes'][c]['mean_weight']:.3f} ({r['classes'][c]['count']})"
                 if r["classes"][c]["mean_weight"] is not None else "-" for c in TOKEN_CLASSES]
        md.append(f"| {r['seed']} | " + " | ".join(cells) + f" | {r['mean_weight']} | {r['weight_std']} | "
                  f"{r['final_keep_ratio']} | {r['train_s']} |")
    md += ["", "Top tokens (seed %d): %s" % (runs[0]["seed"], ", ".join(f"`{t}`" for t in runs[0]["top_tokens"])),
           "", "Bottom tokens (seed %d): %s" % (runs[0]["seed"], ", ".join(f"`{t}`" for t in runs[0]["bottom_tokens"]))]
    if runs[0]["warmup_loss_first_last"]:
        md += ["", "Predictor warm-up (unmasked rationales), answer loss over its first / last five steps: "
               + "; ".join(f"seed {r['seed']} {r['warmup_loss_first_last'][0]} / {r['warmup_loss_first_last'][1]}"
                           for r in runs) + "."]
    mean_wall = sum(r["wall_s"] for r in runs) / len(runs)
    if plain:
        md += ["", f"Cost: weighting {mean_wall:.1f} s per run (mean over seeds, training and weighting every "
               f"rationale) against {plain['wall_s']} s for one plain distillation epoch ({plain['steps']} steps, "
               f"{plain['s_per_step']} s/step): **{mean_wall / plain['wall_s']:.2f} of an epoch**."]
    md += ["", f"Peak RSS {result['peak_rss_mb']} MB. Figure-2-like picture of seed {runs[0]['seed']}: "
           f"`{figure_dir.name}/weights.png`, `{figure_dir.name}/weights.html`.",
           "", "Reproduce: `python bench/weighting_cost.py %s --seeds %s%s%s`" % (
               os.path.relpath(a.config, ROOT), " ".join(map(str, a.seeds)),
               "".join(f" --set {s}" for s in a.set), " --no-plain" if a.no_plain else "")]
    Path(a.out + ".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
