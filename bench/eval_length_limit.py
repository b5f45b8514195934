"""Does the evaluation's length limit (`eval.max_new_tokens`, 200) cut answers that a longer limit would complete?

11.5 % of the GPT-3.5 SVAMP training targets (20.5 % of ASDiv's) are longer than 200 tokens of the default student's
tokenizer, so a student that writes as long as its teacher could be stopped before its answer sentence. This
evaluates trained adapters on the same test questions at several limits and compares them question by question:
how many outputs reach each limit, and which answers and scores change.

    python bench/eval_length_limit.py runs/svamp-paper/svamp-kpod-s0/train/final --limits 200 400
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from kpod.data.datasets import load_split  # noqa: E402
from kpod.evaluation.evaluate import evaluate_questions, git_commit, machine  # noqa: E402
from kpod.experiment.cells import shown_run_dir  # noqa: E402
from kpod.experiment.report import machine_label  # noqa: E402
from kpod.models import load_student, load_tokenizer  # noqa: E402


AT_LIMIT_SLACK = 5  # a cut output, decoded and tokenised again, can come out a few tokens shorter than the limit


RELEASES = [("svamp", "gpt35"), ("asdiv", "gpt35"), ("gsm8k", "llama3"), ("csqa", "palm")]


def target_lengths(tokenizer, limits: list[int]) -> dict:
    """How many kept training targets of each shipped release are longer than each limit, in the student's tokens
    (rationale, its closing statement cut, and the answer sentence: where generation stops)."""
    from kpod.data.prompts import target_answer
    from kpod.data.rationales import import_rationales, split_answer_statement

    out = {}
    for dataset, source in RELEASES:
        questions = {q.id: q for q in load_split(dataset, "train")}
        kept = [r for r in import_rationales(dataset, source)[0] if r.correct]
        lengths = [len(tokenizer(f" {split_answer_statement(r.rationale)[0]} Therefore, the answer is "
                                 f"{target_answer(questions[r.id])}.").input_ids) for r in kept]
        out[f"{dataset}/{source}"] = {"targets": len(lengths), **{f"over_{n}": sum(x > n for x in lengths)
                                                                   for n in limits}}
    return out


def compare(limits: list[int], runs: dict[int, dict]) -> dict:
    """Per limit: accuracy and outputs that used every token; against the first limit: answers and scores that
    changed."""
    base = runs[limits[0]]["rows"]
    out = {}
    for limit in limits:
        rows = runs[limit]["rows"]
        out[str(limit)] = {
            "correct": sum(r["correct"] for r in rows),
            "n": len(rows),
            "at_limit": sum(n >= limit - AT_LIMIT_SLACK for n in runs[limit]["new_tokens"]),
            "no_answer": sum(r["extracted"] is None for r in rows),
            "answer_changed": sum(a["extracted"] != b["extracted"] for a, b in zip(base, rows)),
            "gained": sum(b["correct"] and not a["correct"] for a, b in zip(base, rows)),
            "lost": sum(a["correct"] and not b["correct"] for a, b in zip(base, rows)),
            "wall_s": runs[limit]["wall_s"],
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("adapters", nargs="+", help="LoRA adapter folders (runs/NAME/train/final)")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--dataset", default="svamp")
    ap.add_argument("--split", default="test")
    ap.add_argument("--n", type=int, default=150, help="first N questions of the split")
    ap.add_argument("--limits", type=int, nargs="+", default=[200, 400])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--labels", nargs="*", help="one label per adapter (default: its run folder's name)")
    ap.add_argument("--out", default=str(ROOT / "results" / "eval_length_limit"))
    a = ap.parse_args()
    from peft import PeftModel

    limits = sorted(set(a.limits))
    questions = load_split(a.dataset, a.split)[: a.n]
    labels = a.labels or [Path(p).resolve().parents[1].name for p in a.adapters]
    if len(labels) != len(a.adapters):
        ap.error("--labels needs one label per adapter")
    rows = []
    for label, adapter in zip(labels, a.adapters):
        base, tok = load_student(a.model)
        model = PeftModel.from_pretrained(base, adapter).eval()
        runs = {}
        for limit in limits:
            with tempfile.TemporaryDirectory() as scratch:
                t0 = time.time()
                res = evaluate_questions(model, tok, questions, dataset=a.dataset, split=a.split, out_dir=Path(scratch),
                                         batch_size=a.batch_size, max_new_tokens=limit, progress=False)
                wall = round(time.time() - t0, 1)
                predictions = [json.loads(line) for line in (Path(scratch) / "predictions.jsonl").open()]
            counts = [len(tok(p["output"], add_special_tokens=False).input_ids) for p in predictions]
            runs[limit] = {"rows": predictions, "new_tokens": counts, "wall_s": wall, "accuracy": res["accuracy"]}
            print(f"{label} limit {limit}: {res['correct']}/{res['n']} correct, {wall} s", flush=True)
        rows.append({"label": label, "adapter": shown_path(adapter), "by_limit": compare(limits, runs)})
    result = {"bench": "eval_length_limit", "machine": machine(), "commit": git_commit(),
              "command": "python bench/eval_length_limit.py " + " ".join(map(shown_path, a.adapters)) +
                         f" --limits {' '.join(map(str, limits))}",
              "model": a.model, "dataset": a.dataset, "split": a.split, "n": len(questions), "limits": limits,
              "note": f"at_limit counts outputs whose text, tokenised again, is within {AT_LIMIT_SLACK} tokens of the limit "
                      "(cut there); "
                      "answer_changed, gained and lost compare each limit with the first.",
              "adapters": rows, "target_lengths": target_lengths(load_tokenizer(a.model), limits)}
    print(write_report(result, Path(a.out)))


def shown_path(adapter: str) -> str:
    """An adapter (RUN/train/final) as the results name it: its run folder as the experiment reports name one."""
    path = Path(adapter)
    return str(Path(shown_run_dir(path.parent.parent)) / path.parent.name / path.name)


def write_report(result: dict, out: Path) -> str:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    lines = [f"# Evaluation length limit: {result['dataset']} {result['split']}, first {result['n']} questions", "",
             f"`{result['command']}`. Machine: {machine_label(result['machine'])}; commit {result['commit']}. "
             f"{result['note']}", "",
             "| adapter | limit | correct | outputs at the limit | no answer | answers changed | gained / lost | time (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for row in result["adapters"]:
        for limit in result["limits"]:
            r = row["by_limit"][str(limit)]
            lines.append(f"| {row['label']} | {limit} | {r['correct']}/{r['n']} | {r['at_limit']} | {r['no_answer']} | "
                         f"{r['answer_changed']} | {r['gained']} / {r['lost']} | {r['wall_s']} |")
    if result.get("target_lengths"):
        lines += ["", "Training targets longer than each limit (kept rationales of the shipped releases, the student's "
                      "tokens up to the answer sentence's period, as generation stops there):", "",
                  "| release | targets | " + " | ".join(f"over {n}" for n in result["limits"]) + " |",
                  "|---|---|" + "---|" * len(result["limits"])]
        for name, row in result["target_lengths"].items():
            lines.append(f"| {name} | {row['targets']} | " + " | ".join(
                f"{row[f'over_{n}']} ({100 * row[f'over_{n}'] / row['targets']:.1f} %)" for n in result["limits"]) + " |")
    text = "\n".join(lines) + "\n"
    out.with_suffix(".md").write_text(text)
    return text


if __name__ == "__main__":
    main()
