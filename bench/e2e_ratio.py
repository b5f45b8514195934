"""KPOD end to end against plain CoT distillation, from two finished runs with the same data, epochs and seed:
KPOD's preparation (weighting, difficulty, clusters, schedule) plus its training, over plain's training; plus each
epoch's wall time and resident memory (which must not grow from epoch to epoch).

    python bench/e2e_ratio.py runs/svamp-paper/svamp-kpod-s0 runs/svamp-paper/svamp-plain-s0 --out results/svamp_e2e
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from kpod.evaluation.evaluate import git_commit, machine  # noqa: E402

KPOD_STAGES = ("weigh", "difficulty", "clusters", "schedule", "train")


def load(run: Path) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    train = json.loads((run / "train" / "summary.json").read_text())
    return {"run": str(run), "timings_s": summary["timings_s"], "train": {k: train.get(k) for k in (
        "global_steps", "train_wall_s", "s_per_step", "train_tokens_per_s", "peak_rss_mb", "epoch_log")},
        "accuracy": {r["split"]: [r["accuracy"], r["correct"], r["n"]] for r in summary["results"]}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kpod_run", type=Path)
    ap.add_argument("plain_run", type=Path)
    ap.add_argument("--out", default=str(ROOT / "results" / "svamp_e2e"))
    a = ap.parse_args()
    kpod, plain = load(a.kpod_run), load(a.plain_run)
    kpod_total = sum(kpod["timings_s"].get(s, 0.0) for s in KPOD_STAGES)
    ratio = kpod_total / plain["timings_s"]["train"]
    result = {"machine": machine(), "commit": git_commit(), "kpod": kpod, "plain": plain,
              "kpod_end_to_end_s": round(kpod_total, 1), "plain_train_s": plain["timings_s"]["train"],
              "ratio": round(ratio, 3)}
    Path(a.out + ".json").write_text(json.dumps(result, indent=1))
    md = ["# KPOD end to end against plain CoT distillation (same data, epochs, seed)", "",
          f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, torch {result['machine']['torch']}; "
          f"runs `{kpod['run']}` and `{plain['run']}`.", "",
          "| stage | KPOD (s) | plain (s) |", "|---|---|---|"]
    for s in KPOD_STAGES:
        md.append(f"| {s} | {kpod['timings_s'].get(s, '-')} | {plain['timings_s'].get(s, '-')} |")
    md += [f"| **weigh + difficulty + clusters + schedule + train** | **{kpod_total:.1f}** | "
           f"**{plain['timings_s']['train']}** |", "",
           f"Ratio KPOD / plain: **{ratio:.2f}**.", "", "| run | epoch | wall (s) | RSS at epoch end (MB) | peak RSS so far (MB) |",
           "|---|---|---|---|---|"]
    for name, r in (("KPOD", kpod), ("plain", plain)):
        for e in r["train"]["epoch_log"] or []:
            md.append(f"| {name} | {round(e['epoch'])} | {e['wall_s']} | {e['rss_mb']} | {e['peak_rss_mb']} |")
    md += ["", "Test accuracy: " + "; ".join(f"{n} {r['accuracy']}" for n, r in (("KPOD", kpod), ("plain", plain))),
           "", f"Reproduce: `kpod experiment configs/experiments/svamp-paper.yaml --method plain --method kpod --seed 0`, "
           f"then `python bench/e2e_ratio.py {kpod['run']} {plain['run']}`."]
    Path(a.out + ".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
