"""The report of an experiment: results/NAME.json and .md (the tables in the paper's layout, each method against the
reference one, the spread between seeds, the cost of each method) and the plots."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from kpod.baselines.registry import method_label
from kpod.experiment.cells import parse_column
from kpod.experiment.config import ZERO_SHOT, ZERO_SHOT_LABEL, ExperimentConfig, TableSpec
from kpod.experiment.stats import (
    difference_interval,
    format_p,
    mean_std,
    one_way_anova,
    paired_difference_interval,
    sign_flip_p,
)

log = logging.getLogger("kpod.experiment")


def aggregate(records: list[dict]) -> dict[str, dict[str, dict]]:
    """{method: {column: {seeds, values, mean, std, n}}} over the finished cells; `zero_shot` from any cell that
    evaluated the un-distilled student (one value per dataset column and seed)."""
    values: dict[str, dict[str, dict[int, float]]] = {}
    for rec in records:
        for col, r in (rec.get("accuracy") or {}).items():
            values.setdefault(rec["method"], {}).setdefault(col, {})[rec["seed"]] = exact_accuracy(r)
        for col, r in (rec.get("zero_shot_accuracy") or {}).items():
            shown = values.setdefault(ZERO_SHOT, {}).setdefault(col, {}).setdefault(rec["seed"], exact_accuracy(r))
            if shown != exact_accuracy(r):  # cells whose overrides change the prompt or the evaluation
                log.warning("the un-distilled student's %s accuracy differs between cells of seed %s (%.2f in %s, "
                            "%.2f shown): their methods evaluate it otherwise", col, rec["seed"], exact_accuracy(r),
                            rec.get("cell", rec["method"]), shown)
    out: dict[str, dict[str, dict]] = {}
    for method, cols in values.items():
        for col, by_seed in cols.items():
            seeds = sorted(by_seed)
            vals = [by_seed[s] for s in seeds]
            mean, std = mean_std(vals)
            out.setdefault(method, {})[col] = {"seeds": seeds, "values": vals, "mean": mean, "std": std, "n": len(vals)}
    return out


def exact_accuracy(result: dict) -> float:
    """100 * correct / n, not the stored accuracy rounded to two places, so that a table's mean and std agree with
    the comparisons, which count answers (stored results without counts fall back to the rounded value)."""
    if result.get("n") and result.get("correct") is not None:
        return 100.0 * result["correct"] / result["n"]
    return result["accuracy"]


# ----------------------------------------------------------------------------- tables
def format_cell(stats: dict | None, expected_n: int) -> str:
    if not stats or stats["n"] == 0:
        return "–"
    text = f"{stats['mean']:.2f}" if stats["n"] == 1 else f"{stats['mean']:.2f} ± {stats['std']:.2f}"
    return text + (f" (n={stats['n']})" if stats["n"] < expected_n else "")


def format_one_run(stats: dict | None) -> str:
    if not stats or stats["n"] == 0:
        return "–"
    if len(set(stats["values"])) > 1:  # evaluations that differ (another machine or library): show their spread
        return format_cell(stats, stats["n"])
    return f"{stats['values'][0]:.2f} (one run)"


def table_columns(exp: ExperimentConfig, agg: dict, rows: list[str]) -> list[str]:
    """Columns found in the rows: in-distribution ones in the experiment's dataset order, then the OOD ones."""
    found = {col for m in rows for col in agg.get(m, {})}
    order = {d: i for i, d in enumerate(exp.datasets)}
    parts = {c: parse_column(c) for c in found}
    return sorted(found, key=lambda c: (parts[c].trained_on is not None, order.get(parts[c].dataset, len(order)), c))


def row_label(exp: ExperimentConfig, method: str) -> str:
    if method == ZERO_SHOT:
        return ZERO_SHOT_LABEL
    entry = exp.methods.get(method)
    return (entry.label if entry and entry.label else None) or method_label(method)


def markdown_table(exp: ExperimentConfig, spec: TableSpec, agg: dict) -> str:
    columns = spec.columns or table_columns(exp, agg, spec.methods)
    ref_cols = [c for c in columns if any(c in spec.reference.get(m, {}) for m in spec.methods)]
    head = ["method"] + columns + [f"ref. {c}" for c in ref_cols]
    lines = [f"### {spec.title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in spec.methods:
        if method == ZERO_SHOT:  # one greedy evaluation (every seed's cell reads the same cached one): no spread
            cells = [format_one_run(agg.get(method, {}).get(c)) for c in columns]
        else:
            cells = [format_cell(agg.get(method, {}).get(c), len(exp.seeds)) for c in columns]
        refs = [f"{spec.reference[method][c]:.2f}" if c in spec.reference.get(method, {}) else "–" for c in ref_cols]
        lines.append("| " + " | ".join([row_label(exp, method)] + cells + refs) + " |")
    notes = ([f"ref.: {spec.reference_label}."] if ref_cols else []) + ([spec.note] if spec.note else [])
    if notes:
        lines += ["", " ".join(notes)]
    return "\n".join(lines)


def mean_of(values) -> str:
    """The mean of the known values, rounded for a table ("–" when none is known)."""
    mean, _ = mean_std([v for v in values if v is not None])
    return "–" if mean is None else f"{mean:.0f}"


def cost_table(exp: ExperimentConfig, records: list[dict]) -> str:
    """What each method's finished cells cost, mean over them: optimiser steps, training and whole-cell wall time
    (a fair comparison states its budgets; times include whatever else ran on the machine meanwhile)."""
    lines = ["### Cost per cell (mean over finished cells)", "",
             "| method | cells | train steps | train s | cell s |", "|---|---|---|---|---|"]
    for method in exp.methods:
        done = [r for r in records if r["method"] == method and r.get("done")]
        if not done:
            continue
        train = [r.get("train") or {} for r in done]
        lines.append(f"| {row_label(exp, method)} | {len(done)} | {mean_of(t.get('global_steps') for t in train)} | "
                     f"{mean_of(t.get('train_wall_s') for t in train)} | {mean_of(r.get('wall_s') for r in done)} |")
    return "\n".join(lines)


def column_entries(records: list[dict], method: str, column: str) -> list[dict]:
    """A method's result in one column from each of its finished cells; for the un-distilled student (ZERO_SHOT),
    the zero-shot result every cell carries (one greedy evaluation, repeated in the cells sharing it)."""
    entries = []
    for rec in records:
        if method == ZERO_SHOT:
            r = (rec.get("zero_shot_accuracy") or {}).get(column)
        else:
            r = (rec.get("accuracy") or {}).get(column) if rec["method"] == method and rec.get("done") else None
        if r:
            entries.append(r)
    return entries


def pooled_accuracy(records: list[dict], method: str, column: str) -> tuple[float | None, int]:
    """A method's accuracy pooled over its finished seeds in one column (a fraction; None without any), and the
    number of test questions (the un-distilled student's: one greedy evaluation, repeated in the cells sharing it)."""
    correct = total = questions = 0
    for r in column_entries(records, method, column):
        if "correct" in r:
            correct, total, questions = correct + r["correct"], total + r["n"], max(questions, r["n"])
    return (correct / total if total else None), questions


def per_question_accuracy(records: list[dict], method: str, column: str) -> tuple[np.ndarray, str] | None:
    """Per test question, the fraction of a method's finished seeds that answered it right, and the digest of the
    questions; None unless the answers of every finished seed are on hand, all for the same questions. The zero-shot
    row is one greedy evaluation whatever the seed: its first record stands for it."""
    entries = column_entries(records, method, column)
    if method == ZERO_SHOT:
        entries = entries[:1]
    if not entries or any("outcomes" not in r for r in entries) or len({r["questions"] for r in entries}) > 1:
        return None
    right = np.array([[c == "1" for c in r["outcomes"]] for r in entries], dtype=np.float64)
    return right.mean(axis=0), entries[0]["questions"]


def seed_spread(exp: ExperimentConfig, agg: dict, methods: list[str] | None = None,
                columns: list[str] | None = None) -> list[dict]:
    """Per column, how far the seeds of one method scatter against how far the methods' means do, over the methods
    (default: every method of the experiment) with two seeds or more: the pooled within-method standard deviation, the
    standard deviation of the method means, and a one-way ANOVA of the per-seed accuracies (each seed one training
    run): its p is the chance of an F this large if no method differed. This covers the spread between training runs
    that the intervals over the test questions leave out."""
    methods = [m for m in (methods or exp.methods) if m in exp.methods]  # the zero-shot row: one evaluation, no spread
    out = []
    for col in columns or table_columns(exp, agg, methods):
        groups = {m: agg[m][col]["values"] for m in methods if agg.get(m, {}).get(col, {}).get("n", 0) >= 2}
        if len(groups) < 2:
            continue
        anova = one_way_anova(list(groups.values()))
        means = [float(np.mean(v)) for v in groups.values()]
        out.append({"column": col, "methods": list(groups), "runs": sum(len(v) for v in groups.values()),
                    "seed_std": anova["within_std"], "std_of_means": mean_std(means)[1],
                    "f": anova["f"], "p": anova["p"], "df": anova["df"]})
    return out


def seed_spread_table(rows: list[dict], heading: str = "### Spread between seeds", explain: bool = True) -> str:
    if not rows:
        return ""
    lines = [heading, "",
             "| column | methods with 2+ seeds | runs | seed-to-seed std | std of method means | ANOVA F | p |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        f_text = "–" if r["f"] is None else f"{r['f']:.2f} ({r['df'][0]}, {r['df'][1]})"
        p_text = "–" if r["p"] is None else format_p(r["p"])
        lines.append(f"| {r['column']} | {len(r['methods'])} | {r['runs']} | {r['seed_std']:.2f} | "
                     f"{r['std_of_means']:.2f} | {f_text} | {p_text} |")
    if not explain:
        return "\n".join(lines)
    lines += ["", "Seed-to-seed std: the standard deviation between seeds of one method, pooled over the methods with "
                  "two seeds or more; if no method differed, the method means (of k seeds each) would still scatter "
                  "by about that std / sqrt(k). One-way ANOVA over the per-seed accuracies, F (degrees of freedom): p "
                  "is the chance of an F this large when no method differs (approximate: it assumes normal, "
                  "equal spreads). It holds the test questions fixed, since every seed answers the same ones: a small "
                  "p says the methods differ on these questions beyond the spread between training runs, while the "
                  "interval over the test questions above says whether a difference would carry over to other "
                  "questions. A method is shown better only where both agree."]
    return "\n".join(lines)


def seed_accuracies(agg: dict, method: str, column: str) -> dict[int, float]:
    stats = agg.get(method, {}).get(column)
    return dict(zip(stats["seeds"], stats["values"])) if stats else {}


def comparisons(exp: ExperimentConfig, records: list[dict], agg: dict, ref: str | None = None,
                methods: list[str] | None = None, columns: list[str] | None = None) -> list[dict]:
    """Whether `ref` (default the experiment's `compare_with`, KPOD) beats each other method (default: the zero-shot
    row and every method), per column: the difference of pooled accuracies with its interval, a verdict only where the
    interval excludes 0, and in how many of the seeds both finished it was ahead (per-seed accuracies from `agg`, the
    records' `aggregate`). Where both methods' answers per question are in the records, the paired interval
    (`paired_difference_interval`) and the paired test's p (`sign_flip_p`) are added, and the verdict is the test's
    (p < 0.05); else the verdict is the unpaired interval's."""
    ref = ref or exp.compare_with
    if not ref or ref not in exp.methods:
        return []
    others = [m for m in (methods if methods is not None else [ZERO_SHOT, *exp.methods]) if m != ref]
    out = []
    for col in columns or table_columns(exp, agg, [ref]):
        p_ref, n_ref = pooled_accuracy(records, ref, col)
        seeds_ref = seed_accuracies(agg, ref, col)
        by_question_ref = per_question_accuracy(records, ref, col)
        for method in others:
            p, n = pooled_accuracy(records, method, col)
            if p is None or p_ref is None:
                continue
            diff, lo, hi = difference_interval(p_ref, n_ref, p, n)
            seeds = seed_accuracies(agg, method, col)
            if method == ZERO_SHOT:  # one evaluation, the same for every seed
                seeds = {s: next(iter(seeds.values())) for s in seeds_ref}
            shared = sorted(set(seeds_ref) & set(seeds))
            row = {"column": col, "method": method, "against": ref, "difference": diff, "low": lo, "high": hi,
                   "paired_low": None, "paired_high": None, "paired_p": None, "questions_differing": None}
            verdict = "higher" if lo > 0 else "lower" if hi < 0 else "no clear difference"
            by_question = per_question_accuracy(records, method, col)
            if by_question_ref is not None and by_question is not None and by_question_ref[1] == by_question[1]:
                _, row["paired_low"], row["paired_high"], row["questions_differing"] = paired_difference_interval(
                    by_question_ref[0], by_question[0])
                row["paired_p"] = sign_flip_p(by_question_ref[0], by_question[0])
                clear = row["paired_p"] < 0.05
                verdict = "higher" if clear and diff > 0 else "lower" if clear and diff < 0 else "no clear difference"
            row.update(verdict=verdict, seeds_ahead=sum(seeds_ref[s] > seeds[s] for s in shared), seeds_shared=len(shared),
                       questions=n_ref)
            out.append(row)
    return out


def comparison_table(exp: ExperimentConfig, rows: list[dict], heading: str | None = None, explain: bool = True) -> str:
    if not rows:
        return ""
    label = row_label(exp, rows[0]["against"])
    paired = any(r.get("paired_low") is not None for r in rows)  # reports of cells without their answers keep their layout
    lines = [heading or f"### {label} against each method", "",
             f"| column | method | {label} − method (points) | 95 % interval |"
             + (" paired 95 % interval | questions scored differently | paired p |" if paired else "")
             + f" verdict | seeds {label} ahead |",
             "|---|---|---|---|" + ("---|---|---|" if paired else "") + "---|---|"]
    for r in rows:
        extra = ""
        if paired:
            extra = (" – | – | – |" if r.get("paired_low") is None else
                     f" [{r['paired_low']:+.2f}, {r['paired_high']:+.2f}] | {r['questions_differing']} of "
                     f"{r['questions']} | {format_p(r['paired_p'])} |")
        lines.append(f"| {r['column']} | {row_label(exp, r['method'])} | {r['difference']:+.2f} | "
                     f"[{r['low']:+.2f}, {r['high']:+.2f}] |{extra} {r['verdict']} | {r['seeds_ahead']}/{r['seeds_shared']} |")
    if not explain:
        return "\n".join(lines)
    lines += ["", f"Difference of accuracies pooled over each method's finished seeds. 95 % interval: Newcombe's "
                  f"score interval for two proportions over the test questions (the seeds answer the same questions, "
                  f"so they are not counted as more); it covers test-sampling noise, not the spread between training "
                  f"runs. A verdict needs the interval to exclude 0. Seeds ahead: seeds both finished where {label} "
                  f"scored higher (ties count as not)."]
    if paired:
        lines += ["", "Paired 95 % interval: the same difference taken question by question, since both methods "
                      "answered the same questions (each question's answers averaged over the seeds first; mean ± 1.96 "
                      "standard errors over the questions). The questions both get right or both miss add no difference, "
                      "so it is usually the narrower of the two; approximate when few questions are scored "
                      "differently. Paired p: a sign-flip permutation test over the questions scored differently "
                      "(exact up to 16 of them), which stays sound when they are few; where it is shown, the verdict "
                      "is its (p < 0.05). Both cover the test questions, not the spread between training runs."]
    return "\n".join(lines)


def table_checks(exp: ExperimentConfig, spec: TableSpec, records: list[dict], agg: dict, explain: bool) -> dict:
    """A table's own reference row against each of its other rows, and the ANOVA over its rows (`TableSpec.compare_with`),
    with their markdown."""
    rows = comparisons(exp, records, agg, spec.compare_with, spec.methods, spec.columns)
    spread = seed_spread(exp, agg, spec.methods, spec.columns)
    label = row_label(exp, spec.compare_with)
    parts = [comparison_table(exp, rows, f"#### {spec.title}: {label} against each row", explain),
             seed_spread_table(spread, f"#### {spec.title}: spread between seeds of its rows", explain)]
    if not explain and any(parts):
        parts.append("Difference, interval and ANOVA as in the experiment-wide tables below, over this table's rows.")
    return {"comparison": rows, "seed_spread": spread, "markdown": "\n\n".join(p for p in parts if p)}


def machine_label(machine: dict) -> str:
    gpu = f", {machine['gpu']}" if machine.get("gpu") else ""
    libraries = "".join(f", {lib} {machine[lib]}" for lib in ("transformers", "peft") if machine.get(lib))
    return f"{machine.get('cpu')} ({machine.get('cores')} cores){gpu}, torch {machine.get('torch')}{libraries}"


def provenance_line(records: list[dict]) -> str:
    """The machines and commits the finished cells ran on (cells carried over from an older report may not know)."""
    known = [r for r in records if r.get("machine")]
    machines = sorted({machine_label(r["machine"]) for r in known})
    commits = sorted({r["commit"] for r in known if r.get("commit")})
    return (f"Ran on: {'; '.join(machines) or 'not recorded'}; commits: {', '.join(commits) or 'not recorded'} "
            f"(recorded by {len(known)} of {sum(r.get('done', False) for r in records)} finished cells).")


def write_report(exp: ExperimentConfig, records: list[dict], results_dir: str | Path) -> dict:
    """results/NAME.json and .md, and the plots (when matplotlib is installed); returns the JSON content."""
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    agg = aggregate(records)
    specs = exp.tables or [TableSpec(title=exp.name, methods=list(exp.methods))]
    tables = {spec.title: markdown_table(exp, spec, agg) for spec in specs}
    done = sum(r.get("done", False) for r in records)
    scope = "Accuracy (%) on the test split"
    if any(parse_column(c).split == "all" for r in records for c in (r.get("accuracy") or {})):
        scope += " (where a column names no other split; 'all' = train + dev + test)"
    md = [f"# {exp.name}", "",
          f"{scope}, mean ± sample std over seeds {exp.seeds}; (n=k) marks a mean over fewer "
          f"seeds. {done}/{len(records)} cells finished.", ""]
    compared = comparisons(exp, records, agg)
    spread = seed_spread(exp, agg)
    within_tables = {}
    for spec in specs:
        md += [tables[spec.title], ""]
        if spec.compare_with:
            within_tables[spec.title] = table_checks(exp, spec, records, agg, explain=not (compared and spread))
            md += [within_tables[spec.title].pop("markdown"), ""]
    if compared:
        md += [comparison_table(exp, compared), ""]
    if spread:
        md += [seed_spread_table(spread), ""]
    md += [cost_table(exp, records), ""]
    md += [provenance_line(records), ""]
    failed = [r for r in records if r.get("status") == "failed"]
    if failed:
        md += ["Failed cells: " + ", ".join(r["cell"] for r in failed), ""]
    out = {"experiment": exp.name, "written": time.strftime("%Y-%m-%d %H:%M:%S"),
           "config": exp.model_dump(mode="json"), "cells": records, "aggregate": agg, "tables": tables,
           "comparison": compared, "seed_spread": spread, "table_comparisons": within_tables}
    (results_dir / f"{exp.name}.json").write_text(json.dumps(out, indent=1, default=str))
    (results_dir / f"{exp.name}.md").write_text("\n".join(md))
    try:
        from kpod.experiment.plots import plot_accuracy, plot_learning_curves

        out["plots"] = [str(p) for p in (plot_accuracy(exp, agg, results_dir / f"{exp.name}-accuracy.png",
                                                       row_label),
                                         plot_learning_curves(exp, records, results_dir / f"{exp.name}-loss.png",
                                                              row_label)) if p]
    except ImportError:
        log.info("matplotlib is not installed: no plots (pip install kpod[plots])")
    return out
