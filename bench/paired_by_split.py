"""Two methods of an experiment compared question by question within each split of the questions they answered.

A student trained on one benchmark and tested on every question of another (`eval.other_splits: [all]`) answers
that benchmark's train, dev and test questions in that order. This splits each such column back into its parts and
compares the two methods on each part as the experiment report does on the whole (per-question answers averaged over
seeds; paired 95 % interval; sign-flip p), and on the questions outside the test split: those that played no part in
choosing the comparison, when an earlier test-split result is what raised it. Reads the report's JSON only: no model
is run.

    python bench/paired_by_split.py results/ood-gsm8k-cpu-all-questions.json --a mcc_kd_stripped --b plain_stripped \
        --out results/ood-gsm8k-cpu-all-questions-by-split --earlier results/ood-gsm8k-cpu-full-test.json

Needs the data folder of the evaluated benchmarks (KPOD_DATA_DIR or --data-dir) to know each split's questions; the
digest of their ids must match the one the report recorded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from kpod.data.datasets import SPLITS, load_split  # noqa: E402
from kpod.evaluation.evaluate import git_commit, machine  # noqa: E402
from kpod.experiment import column_of, parse_column  # noqa: E402
from kpod.experiment.report import column_entries  # noqa: E402
from kpod.experiment.stats import format_p, paired_difference_interval, sign_flip_p  # noqa: E402


def id_digest(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def whole_benchmark_columns(report: dict) -> list[str]:
    """The report's columns that hold every question of a benchmark ('X all (from Y)')."""
    found = {c for rec in report["cells"] for c in (rec.get("accuracy") or {})}
    return sorted(c for c in found if parse_column(c).split == "all" and parse_column(c).trained_on)


def split_bounds(dataset: str, data_dir: str | None) -> tuple[dict[str, slice], str, str]:
    """Where each split's questions lie in the answers to the whole of `dataset` (train, dev, test in order, then
    'train + dev' and 'all'), with the id digests of the whole and of the test split alone."""
    parts = {s: [q.id for q in load_split(dataset, s, data_dir)] for s in SPLITS}
    start, bounds = 0, {}
    for s in SPLITS:
        bounds[s] = slice(start, start + len(parts[s]))
        start += len(parts[s])
    bounds["train + dev"] = slice(0, bounds["dev"].stop)
    bounds["all"] = slice(0, start)
    return bounds, id_digest([i for s in SPLITS for i in parts[s]]), id_digest(parts["test"])


def seed_outcomes(records: list[dict], method: str, column: str, digest: str) -> dict[int, np.ndarray]:
    """Per finished seed of `method`, its 0/1 answers in `column`, checked to be for the questions of `digest`."""
    out = {}
    for rec in records:
        entries = column_entries([rec], method, column)
        if not entries:
            continue
        r = entries[0]
        if r.get("questions") != digest:
            raise SystemExit(f"{rec.get('cell')}: answers in {column!r} are not for the questions of the splits "
                             f"(digest {r.get('questions')} against {digest}); is the data folder the one it ran on?")
        out[rec["seed"]] = np.array([c == "1" for c in r["outcomes"]], dtype=np.float64)
    return out


def compare(a: dict[int, np.ndarray], b: dict[int, np.ndarray], part: slice) -> dict:
    """A against B on the questions in `part`: accuracies, paired interval, p, and seeds of A above B's best."""
    mean_a = np.mean([v[part] for v in a.values()], axis=0)
    mean_b = np.mean([v[part] for v in b.values()], axis=0)
    diff, low, high, differing = paired_difference_interval(mean_a, mean_b)
    per_seed_a = {s: round(100 * float(v[part].mean()), 2) for s, v in sorted(a.items())}
    per_seed_b = {s: round(100 * float(v[part].mean()), 2) for s, v in sorted(b.items())}
    return {"questions": int(mean_a.size), "accuracy_a": round(100 * float(mean_a.mean()), 2),
            "accuracy_b": round(100 * float(mean_b.mean()), 2), "per_seed_a": per_seed_a, "per_seed_b": per_seed_b,
            "difference": round(diff, 2), "paired_low": round(low, 2), "paired_high": round(high, 2),
            "questions_differing": differing, "paired_p": round(sign_flip_p(mean_a, mean_b), 4),
            "seeds_a_above_every_b": sum(x > max(per_seed_b.values()) for x in per_seed_a.values())}


def by_split(report: dict, method_a: str, method_b: str, data_dir: str | None) -> list[dict]:
    records = report["cells"]
    columns = whole_benchmark_columns(report)
    if not columns:
        raise SystemExit("no column of the report is a whole benchmark ('X all (from Y)'): nothing to split")
    rows = []
    for column in columns:
        bounds, digest, _ = split_bounds(parse_column(column).dataset, data_dir)
        a, b = (seed_outcomes(records, m, column, digest) for m in (method_a, method_b))
        if not a or not b:
            raise SystemExit(f"{column}: no finished cell with answers for {method_a if not a else method_b}")
        seeds = sorted(set(a) & set(b))
        a, b = {s: a[s] for s in seeds}, {s: b[s] for s in seeds}  # seeds both methods finished
        for name, part in bounds.items():
            rows.append({"column": column, "questions_of": name, "seeds": seeds, **compare(a, b, part)})
    return rows


def test_split_agreement(report: dict, earlier: dict, methods: list[str], data_dir: str | None) -> list[dict]:
    """Per method, seed and benchmark: how many of the test-split answers in `report`'s whole-benchmark column equal
    those of the same cell in `earlier`, a report tested on the test split alone (retrained students that are the
    earlier ones answer every question alike)."""
    out = []
    for column in whole_benchmark_columns(report):
        dataset, _, train_ds = parse_column(column)
        bounds, digest, test_digest = split_bounds(dataset, data_dir)
        test_part = bounds["test"]
        test_column = column_of({"dataset": dataset, "split": "test"}, train_ds)
        for method in methods:
            now = seed_outcomes(report["cells"], method, column, digest)
            before = seed_outcomes(earlier["cells"], method, test_column, test_digest)
            for seed in sorted(set(now) & set(before)):
                same = int(np.sum(now[seed][test_part] == before[seed]))
                out.append({"column": column, "method": method, "seed": seed, "test_questions": len(before[seed]),
                            "same_answers": same, "right_now": int(now[seed][test_part].sum()),
                            "right_before": int(before[seed].sum())})
    return out


def markdown(rows: list[dict], report: dict, method_a: str, method_b: str, meta: dict) -> str:
    methods = report["config"]["methods"]
    label = {m: (methods.get(m) or {}).get("label") or m for m in (method_a, method_b)}
    lines = [f"# {method_a} against {method_b}, question by question, per split ({report['experiment']})", "",
             f"A = {label[method_a]}, B = {label[method_b]}. Answers averaged over the seeds both finished; "
             "paired 95 % interval (mean ± 1.96 SE of the per-question differences) and sign-flip p, as in the "
             "experiment report. 'train + dev': the questions outside the test split.", "",
             "| column | questions of | n | seeds | A % | B % | A − B (points) | paired 95 % interval | differing | "
             "paired p | A seeds above every B seed |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['column']} | {r['questions_of']} | {r['questions']} | {len(r['seeds'])} | "
                     f"{r['accuracy_a']:.2f} | {r['accuracy_b']:.2f} | {r['difference']:+.2f} | "
                     f"[{r['paired_low']:+.2f}, {r['paired_high']:+.2f}] | {r['questions_differing']} | "
                     f"{format_p(r['paired_p'])} | {r['seeds_a_above_every_b']}/{len(r['seeds'])} |")
    lines += ["", "Per seed (%):", ""]
    for r in rows:
        lines.append(f"- {r['column']}, {r['questions_of']}: A {r['per_seed_a']}, B {r['per_seed_b']}")
    if meta.get("test_agreement"):
        lines += ["", f"The test-split answers against those of the same cells in {meta['earlier']} (tested on the "
                  "test split alone):", "", "| column | method | seed | test questions | same answers | right (here) | "
                  "right (there) |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['column']} | {r['method']} | {r['seed']} | {r['test_questions']} | {r['same_answers']} | "
                  f"{r['right_now']} | {r['right_before']} |" for r in meta["test_agreement"]]
    lines += ["", f"Commit {meta['commit']}; machine {meta['machine'].get('cpu')}. Reproduce: `{meta['command']}`", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", help="an experiment's results/NAME.json")
    ap.add_argument("--a", required=True, help="method A (e.g. mcc_kd_stripped)")
    ap.add_argument("--b", required=True, help="method B (e.g. plain_stripped)")
    ap.add_argument("--data-dir", help="data folder (default $KPOD_DATA_DIR or the data shipped with kpod)")
    ap.add_argument("--out", required=True, help="writes OUT.json and OUT.md")
    ap.add_argument("--earlier", help="a report of the same cells tested on the test split alone: count how many of "
                    "its answers the test part of the whole benchmark repeats")
    args = ap.parse_args()
    report = json.loads(Path(args.report).read_text())
    rows = by_split(report, args.a, args.b, args.data_dir)
    command = f"python bench/paired_by_split.py {args.report} --a {args.a} --b {args.b} --out {args.out}"
    meta = {"commit": git_commit(), "machine": machine(), "report": Path(args.report).name,
            "report_commits": sorted({c.get("commit") for c in report["cells"] if c.get("commit")}),
            "command": command + (f" --earlier {args.earlier}" if args.earlier else "")}
    if args.earlier:
        earlier = json.loads(Path(args.earlier).read_text())
        meta["earlier"] = Path(args.earlier).name
        meta["test_agreement"] = test_split_agreement(report, earlier, [args.a, args.b], args.data_dir)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({**meta, "a": args.a, "b": args.b, "rows": rows}, indent=1))
    out.with_suffix(".md").write_text(markdown(rows, report, args.a, args.b, meta))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
