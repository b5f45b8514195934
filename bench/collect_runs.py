"""Collect finished `kpod run` directories into one results table (JSON + markdown) under results/.

For each run: method, test accuracy, examples, epochs, stage wall times (from the run's summary and the stage
artefacts), training tokens/s, generation throughput, the resolved config, machine and commit.

    python bench/collect_runs.py runs/default runs/svamp-plain --name svamp_kpod_vs_plain
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def read_run(run: Path) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    train = json.loads((run / "train" / "summary.json").read_text())
    config = yaml.safe_load((run / "config.yaml").read_text())
    encode = json.loads((run / "data" / "encode_report.json").read_text())
    evals = {}
    for res_path in sorted((run / "eval").glob("*/results.json")):
        res = json.loads(res_path.read_text())
        evals[res_path.parent.name] = {k: res[k] for k in ("dataset", "split", "n", "correct", "accuracy",
                                                           "accuracy_strict", "method", "model", "seed", "commit")}
        evals[res_path.parent.name]["generation"] = res["generation"]
        machine = res["machine"]
    stage_times = dict(summary.get("timings_s", {}))
    for name, path in (("weigh", run / "weighting" / "stats.json"), ("difficulty", run / "curriculum" / "difficulty.json")):
        if path.exists() and name not in stage_times:
            stage_times[name] = json.loads(path.read_text()).get("wall_s")
    stage_times.setdefault("train", train["train_wall_s"])
    return {
        "run": run.name, "method": summary["method"], "evals": evals, "examples": encode["examples"],
        "encode": encode, "epochs": train["epochs"], "steps": train["global_steps"],
        "train_tokens_per_s": train["train_tokens_per_s"], "s_per_step": train["s_per_step"],
        "final_train_loss": train["final_train_loss"], "kpod_stages": train.get("kpod_stages"),
        "stage_wall_s": stage_times, "config": config, "machine": machine,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--name", required=True, help="output name under results/")
    ap.add_argument("--note", default="", help="a sentence added under the table")
    a = ap.parse_args()
    rows = [read_run(Path(r)) for r in a.runs]
    out = ROOT / "results" / a.name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"runs": rows, "note": a.note}, indent=1))
    md = [f"# {a.name}", "", "| run | method | eval | accuracy (%) | correct/n | examples | epochs | train s | "
          "train tokens/s | other stages (s) | gen useful tok/s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        other = {k: v for k, v in r["stage_wall_s"].items() if k != "train" and not k.startswith("eval") and v}
        for label, e in r["evals"].items():
            md.append(
                f"| {r['run']} | {e['method']} | {label} | {e['accuracy']:.2f} | {e['correct']}/{e['n']} | {r['examples']} "
                f"| {r['epochs']:.2f} | {r['stage_wall_s'].get('train', 0):.0f} | {r['train_tokens_per_s']} | "
                f"{', '.join(f'{k} {v:.0f}' for k, v in other.items()) or '-'} | "
                f"{e['generation']['useful_tokens_per_s']} |"
            )
    m = rows[0]["machine"]
    md += ["", f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, GPU {m['gpu']}. "
           f"Commit {rows[0]['evals'][next(iter(rows[0]['evals']))]['commit']}. Configs: in `{out.name}.json`."]
    if a.note:
        md += ["", a.note]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
