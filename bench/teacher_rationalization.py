"""SCOTT's teacher on a local model: how often a rationale leads to its answer, for zero-shot CoT, rationalization
(the prompt names the answer) and rationalization with contrastive decoding.

Each variant is a `kpod teach` run in completion mode on the first N questions of a training split. Turn 1 writes
the rationale (zero-shot CoT, or "The answer is X. Explain why." with or without a contrast prompt); turn 2 asks
the answer from the zero-shot prompt and the rationale alone, never told the answer. A rationale is kept when
that answer is the one it was asked to explain (gold, or the perturbed a' for the counterfactual variant): the
share kept is how often the teacher's rationale, not the hint, carries the answer. Also reported: how often the
rationale's own text states that answer, cut-off rationales, and time.

    python bench/teacher_rationalization.py                          # SmolLM2-135M-Instruct, the first 40 SVAMP training questions
    python bench/teacher_rationalization.py --questions 100 --max-tokens 128 --out results/teacher_rationalization_128
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from kpod.data.records import read_jsonl  # noqa: E402
from kpod.evaluation.evaluate import git_commit, machine  # noqa: E402
from kpod.experiment.report import machine_label  # noqa: E402
from kpod.experiment.stats import format_p, sign_flip_p  # noqa: E402
from kpod.teacher import load_teach_config, run_teach  # noqa: E402

BASELINE = "rationalization, greedy"
VARIANTS = {
    "zero-shot CoT (the paper's teacher)": {},
    "rationalization, greedy": {"enabled": True, "contrast": "none"},
    "rationalization, contrastive vs a perturbed answer (SCOTT)": {"enabled": True, "contrast": "other"},
    "rationalization, contrastive vs no answer": {"enabled": True, "contrast": "empty"},
    "counterfactual: explain a', contrastive vs the gold answer": {"enabled": True, "target": "perturbed",
                                                                  "contrast": "other"},
}


def measure(name: str, rationalize: dict, args, work: Path) -> dict:
    cfg = load_teach_config(None, {
        "dataset": args.dataset, "split": "train", "limit": args.questions, "data_dir": args.data_dir,
        "backend": "hf", "model": args.model, "mode": "completion", "max_tokens": args.max_tokens,
        "batch_size": args.batch_size, "keep_wrong": True, "out": str(work / str(len(list(work.iterdir())))),
        "rationalize": {**rationalize, "strength": args.strength} if rationalize else {},
    })  # fmt: skip
    started = time.monotonic()
    summary = run_teach(cfg, progress=False)
    wall = time.monotonic() - started
    out = Path(cfg.out)
    written = [row for f in ("rationales.jsonl", "rejected.jsonl") if (out / f).exists() for _, row in read_jsonl(out / f)]
    states = sum(row["meta"].get("answer_in_text") == row["gold"] for row in written)
    cut = sum(row["meta"].get("finish_reason") == "length" for row in written)
    examples = [{"id": row["id"], "explained": row["gold"], "answer": row["answer"], "rationale": row["rationale"][:300]}
                for row in written[:3]]
    kept_ids = sorted(row["id"] for row in written if row["correct"] and "dropped" not in row["meta"])
    if len(kept_ids) != summary["kept"]:
        raise RuntimeError(f"{name}: {len(kept_ids)} kept rows on disk, {summary['kept']} in the summary")
    return {"variant": name, "rationalize": cfg.rationalize.model_dump() if rationalize else None,
            "questions": summary["samples"], "kept": summary["kept"],
            "kept_ids": kept_ids,
            "only_the_answer": sum(row["meta"].get("dropped") == "empty_rationale" for row in written),
            "kept_rate": round(summary["kept"] / max(1, summary["samples"]), 4),
            "text_states_the_answer": states, "cut_at_max_tokens": cut,
            "completion_tokens": summary["tokens"]["this_run"]["completion"], "wall_s": round(wall, 1),
            "examples": examples}


def write(rows: list[dict], args, out: Path) -> None:
    meta = {"machine": machine(), "commit": git_commit(), "model": args.model, "dataset": args.dataset,
            "questions": args.questions, "max_tokens": args.max_tokens, "strength": args.strength,
            "batch_size": args.batch_size, "mode": "completion", "greedy": True}
    out.with_suffix(".json").write_text(json.dumps({**meta, "rows": rows}, indent=1))
    md = [f"# {args.model} as SCOTT's teacher on {args.questions} {args.dataset} training questions", "",
          f"`python bench/teacher_rationalization.py --model {args.model} --dataset {args.dataset} --questions "
          f"{args.questions}`: `kpod teach` in completion mode, greedy, `max_tokens` {args.max_tokens}, contrast "
          f"strength {args.strength}. Kept: turn 2, asked from the zero-shot prompt and the rationale alone (not told "
          "the answer), gives the answer the rationale was written for. That checks that the rationale carries its answer, "
          "not that its arithmetic is right: a rationale that states the answer after a wrong sum is kept.", "",
          "| teacher | kept | text states that answer | only the answer, no reasoning (dropped) | cut at max_tokens "
          "| completion tokens | time (s) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        n = r["questions"]
        md.append(f"| {r['variant']} | {r['kept']}/{n} ({100 * r['kept_rate']:.1f} %) | {r['text_states_the_answer']}/{n} "
                  f"| {r['only_the_answer']}/{n} | {r['cut_at_max_tokens']}/{n} | {r['completion_tokens']} | {r['wall_s']} |")
    base = next((r for r in rows if r["variant"] == BASELINE), None)
    if base:
        md += ["", f"Each variant against '{BASELINE}', question by question (the same questions; sign-flip p over the "
               "questions where one kept a rationale and the other did not):", "",
               "| teacher | kept here, not there | kept there, not here | paired p |", "|---|---|---|---|"]
        for r in rows:
            if r is base or r["questions"] != base["questions"]:
                continue
            ids = sorted({*r["kept_ids"], *base["kept_ids"]})
            a = np.array([i in r["kept_ids"] for i in ids], dtype=float)
            b = np.array([i in base["kept_ids"] for i in ids], dtype=float)
            md.append(f"| {r['variant']} | {int(((a == 1) & (b == 0)).sum())} | {int(((a == 0) & (b == 1)).sum())} "
                      f"| {format_p(sign_flip_p(a, b))} |")
    md += ["", f"Machine: {machine_label(meta['machine'])}; commit {meta['commit']}.", ""]
    out.with_suffix(".md").write_text("\n".join(md))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--dataset", default="svamp")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--questions", type=int, default=40)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--strength", type=float, default=0.5)
    parser.add_argument("--out", default=str(REPO / "results" / "teacher_rationalization_svamp"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, rationalize in VARIANTS.items():
            rows.append(measure(name, rationalize, args, Path(tmp)))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "examples"}), flush=True)
            write(rows, args, Path(args.out))


if __name__ == "__main__":
    main()
