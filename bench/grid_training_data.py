"""Which training data of the committed experiment grids another version of kpod builds differently.

A grid's cells keep what they trained on when they ran. When kpod's data code changes (rationale import and the cut
of closing answer statements, step splitting, the step -> token map, SCOTT's rule-based counterfactuals), this
rebuilds every grid's training data with this checkout and with another commit's `src/`, and counts per grid and data
setup the rationales whose text differs (what every method trains on), that split into other steps or other token
spans (what KPOD's schedule reads), and the counterfactual rationales that differ (what SCOTT trains on): the cells a
re-run would not train on the same data.

    python bench/grid_training_data.py --against 3965e48     # -> results/grid_training_data.{json,md}

The other commit's code runs in a subprocess on `git archive REV src`; both sides import only what this file does.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEP_METHODS = {"kpod"}  # the methods whose schedule reads the step split (their ablations share train.method kpod)
COUNTERFACTUAL_METHODS = {"scott"}


def data_setup(cfg) -> tuple:
    d = cfg.data
    return (d.dataset, str(d.rationale_source), d.max_train_questions, d.rationales_per_question,
            d.strip_answer_statement, d.splitter, d.only_correct, d.target_template, cfg.student.name)


def build(configs: list[Path]) -> dict:
    """Per data setup: each rationale's steps and step token spans, and per seed each counterfactual's text."""
    from kpod.baselines import scott
    from kpod.data.answers import answer_type
    from kpod.data.steps import step_texts
    from kpod.distill.examples import encode_examples, rationale_key
    from kpod.experiment.cells import plan_cells
    from kpod.experiment.config import load_experiment
    from kpod.models import load_tokenizer
    from kpod.pipeline import collect_rationales

    out: dict[str, dict] = {}
    for path in configs:
        exp = load_experiment(path)
        for cell in plan_cells(exp, path):
            cfg, method = cell.config, cell.config.train.method
            texts = out.setdefault(json.dumps(["rationales", *data_setup(cfg)]), {"cells": []})
            texts["cells"].append(f"{exp.name}/{cell.name}")
            if "data" not in texts:  # every method trains on these (KPOD's schedule on their steps, SCOTT also on edits)
                texts["data"] = {rationale_key(r): r.rationale for r in collect_rationales(cfg)[1]}
            if method in STEP_METHODS:
                key = json.dumps(["steps", *data_setup(cfg)])
            elif method in COUNTERFACTUAL_METHODS and not cfg.baselines.scott.counterfactual_rationales:
                key = json.dumps(["counterfactuals", *data_setup(cfg), cell.seed])
            else:
                continue
            entry = out.setdefault(key, {"cells": []})
            entry["cells"].append(f"{exp.name}/{cell.name}")
            if "data" in entry:
                continue
            questions, rationales, _ = collect_rationales(cfg)
            by_id = {q.id: q for q in questions}
            if key.startswith('["steps"'):
                d = cfg.data
                # encode_examples, not pipeline.encode_for: older commits, which this also runs on, lack the latter
                examples, _ = encode_examples(load_tokenizer(cfg.student.name), by_id, rationales,
                                              prompt_template=d.prompt_template, target_template=d.target_template,
                                              splitter=d.splitter, max_length=d.max_length, progress=False)
                spans = {e.key: [list(s) for s in e.step_spans] for e in examples}
                entry["data"] = {rationale_key(r): {"steps": step_texts(r.rationale, d.splitter),
                                                    "token_spans": spans.get(rationale_key(r))} for r in rationales}
            else:
                _, made, _ = scott.counterfactual_rationales(by_id, rationales, answer_type(cfg.data.dataset), cell.seed)
                # keyed by the rationale each was made from (None: none made from it)
                entry["data"] = {rationale_key(r): None for r in rationales}
                entry["data"].update({rationale_key(r).replace("+counterfactual", ""): r.rationale for r in made})
    return out


def compare(this: dict, other: dict) -> list[dict]:
    rows = []
    for key, entry in this.items():
        kind, *setup = json.loads(key)
        seed = setup.pop() if kind == "counterfactuals" else None
        new, old = entry["data"], other.get(key, {}).get("data", {})
        both = sorted(set(new) & set(old))
        row = {"kind": kind, "dataset": setup[0], "seed": seed, "setup": setup,
               "grids": sorted({c.split("/")[0] for c in entry["cells"]}), "cells": len(entry["cells"]),
               "rationales": len(new), "only_here": len(set(new) - set(old)), "only_there": len(set(old) - set(new))}
        if kind == "rationales":
            differ = [k for k in both if new[k] != old[k]]
            row.update(texts_differ=len(differ),
                       examples=[{"rationale": k, "here": new[k], "there": old[k]} for k in differ[:3]])
        elif kind == "steps":
            split = [k for k in both if new[k]["steps"] != old[k]["steps"]]
            spans = [k for k in both if new[k]["token_spans"] != old[k]["token_spans"]]
            row.update(steps_differ=len(split), token_spans_differ=len(spans),
                       examples=[{"rationale": k, "here": new[k]["steps"], "there": old[k]["steps"]} for k in split[:3]])
        else:
            differ = [k for k in both if new[k] != old[k]]
            row.update(counterfactuals_differ=len(differ), made_here=sum(v is not None for v in new.values()),
                       made_there=sum(v is not None for v in old.values()),
                       examples=[{"rationale": k, "here": new[k], "there": old[k]} for k in differ[:3]])
        rows.append(row)
    order = {"rationales": 0, "steps": 1, "counterfactuals": 2}
    return sorted(rows, key=lambda r: (r["grids"], r["dataset"], order[r["kind"]], r["seed"] or 0))


def write(rows: list[dict], meta: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({**meta, "rows": rows}, indent=1, ensure_ascii=False))
    md = [f"# Grid training data: this checkout ({meta['commit']}) against {meta['against']}", "",
          f"`{meta['command']}`; {meta['seconds']:.0f} s. Every cell trains on its data setup's rationale texts "
          "(after `data.strip_answer_statement`); KPOD-family cells (`train.method: kpod`) also read the step split "
          "and its token spans; SCOTT cells also train on rule-based counterfactuals (one set per seed).", "",
          "| grids | dataset | what | seed | cells | rationales | differ |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["kind"] == "rationales":
            what, differ = "rationale texts (every method)", f"{r['texts_differ']}"
            if r["only_here"] or r["only_there"]:
                differ += f" (+{r['only_here']} / -{r['only_there']} kept)"
        elif r["kind"] == "steps":
            what, differ = "steps / token spans", f"{r['steps_differ']} / {r['token_spans_differ']}"
        else:
            what = "counterfactuals"
            differ = f"{r['counterfactuals_differ']} (made {r['made_there']} -> {r['made_here']})"
        md.append(f"| {', '.join(r['grids'])} | {r['dataset']} | {what} | {'' if r['seed'] is None else r['seed']} "
                  f"| {r['cells']} | {r['rationales']} | {differ} |")
    md += ["", "`differ` counts rationales present in both versions; the JSON has the data setups and up to three "
           "examples of each."]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", help="the commit to compare with (its src/ via git archive)")
    ap.add_argument("--configs", nargs="*", type=Path,
                    help="experiment files (default: every configs/experiments/*.yaml but the smoke test)")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "grid_training_data")
    ap.add_argument("--build-only", type=Path, help=argparse.SUPPRESS)  # the subprocess: write this side's data
    args = ap.parse_args()
    configs = args.configs or sorted(p for p in (ROOT / "configs/experiments").glob("*.yaml") if "smoke" not in p.name)
    if args.build_only:
        args.build_only.write_text(json.dumps(build(configs)))
        return
    if not args.against:
        ap.error("--against REV is required")
    sys.path.insert(0, str(ROOT / "src"))
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "archive", args.against, "src"], cwd=ROOT, check=True, capture_output=True)
        tar = Path(tmp) / "src.tar"
        tar.write_bytes(archive.stdout)
        with tarfile.open(tar) as t:
            t.extractall(tmp, filter="data")
        there = Path(tmp) / "there.json"
        subprocess.run([sys.executable, __file__, "--build-only", str(there), "--configs", *map(str, configs)],
                       cwd=ROOT, check=True, env={**os.environ, "PYTHONPATH": str(Path(tmp) / "src")})
        other = json.loads(there.read_text())
    this = build(configs)

    from kpod.evaluation.evaluate import git_commit, machine

    against = subprocess.run(["git", "rev-parse", "--short", args.against], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout.strip()
    meta = {"commit": git_commit(), "against": against, "machine": machine(),
            "command": "python bench/grid_training_data.py " + " ".join(sys.argv[1:]),
            "configs": [str(p.relative_to(ROOT)) for p in configs], "seconds": round(time.time() - start, 1)}
    rows = compare(this, other)
    write(rows, meta, args.out)
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
