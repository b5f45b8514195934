"""The `kpod` command: one subcommand per pipeline stage plus `run` for the whole pipeline.

    kpod run configs/default.yaml                 # the whole pipeline; re-running resumes
    kpod run configs/quick.yaml --set train.epochs=2
    kpod eval --model smollm2-135m-instruct --dataset svamp --split test
    kpod weigh configs/default.yaml               # token weights + summary + HTML/PNG pictures
    kpod schedule runs/default                    # the KPOD schedule, stage by stage
    kpod data stats                               # split counts of every dataset, as JSON
    kpod data rationales --dataset svamp          # import a released rationale set, report drops
    kpod teach --dataset svamp --backend openai --model gpt-3.5-turbo --out runs/teach-svamp   # teacher rationales
    kpod experiment configs/experiments/svamp-paper.yaml   # methods x datasets x seeds, then the paper's tables
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import yaml


def parse_overrides(items: list[str]) -> dict:
    """`--set KEY=VALUE` items as config overrides; each VALUE is read as YAML (numbers, lists, null)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"error: --set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key] = yaml.safe_load(value)
    return out


def cmd_run(args) -> int:
    from kpod.config import load_config
    from kpod.pipeline import Pipeline

    overrides = parse_overrides(args.set)
    if args.run_dir:
        overrides["run_dir"] = args.run_dir
    cfg = load_config(args.config, overrides)
    summary = Pipeline(cfg, progress=not args.no_progress, zero_shot_cache=args.zero_shot_cache,
                       stage_cache=args.stage_cache).run()
    print(json.dumps({k: v for k, v in summary.items() if k not in ("zero_shot", "results")}, indent=1))
    for key in ("zero_shot", "results"):
        for r in summary.get(key, []):
            print(f"{r['method']:<36} {r['dataset']}/{r['split']}: accuracy {r['accuracy']:.2f} % "
                  f"({r['correct']}/{r['n']})")
    return 0


def cmd_eval(args) -> int:
    from kpod.data.custom import load_user_jsonl
    from kpod.data.datasets import load_split
    from kpod.evaluation.evaluate import evaluate_questions
    from kpod.models import load_student

    if args.file:
        questions, kind = load_user_jsonl(args.file, args.answer_type)[0], args.answer_type
    else:
        questions, kind = load_split(args.dataset, args.split, args.data_dir), args.dataset
    questions = questions[: args.max_examples]
    model, tok = load_student(args.model)
    if args.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, args.adapter).merge_and_unload()
    out_dir = Path(args.out) if args.out else None
    res = evaluate_questions(model, tok, questions, dataset=kind, split=args.split, out_dir=out_dir,
                             method=args.method, model_name=args.model, batch_size=args.batch_size,
                             max_new_tokens=args.max_new_tokens, progress=not args.no_progress, engine=args.engine,
                             engine_dir=(out_dir or Path(".")) / "vllm-model")
    print(json.dumps(res, indent=1))
    return 0


def cmd_schedule(args) -> int:
    from kpod.data.records import DataError
    from kpod.curriculum.inspect import plot_schedule, schedule_table
    from kpod.paths import RunPaths

    path = RunPaths(Path(args.run_dir)).curriculum_dir / "schedule.json"
    if not path.exists():
        raise DataError(f"{path}: no schedule in this run directory (run a KPOD config with `kpod run` first)")
    schedule = json.loads(path.read_text())
    print(schedule_table(schedule))
    if args.json:
        print(json.dumps({k: v for k, v in schedule.items() if k != "given_steps"}, indent=1))
    try:
        plot_schedule(schedule, path.with_suffix(".png"))
        print(f"plot: {path.with_suffix('.png')}")
    except ImportError:
        print("(install matplotlib, `pip install kpod[plots]`, for the plot)")
    return 0


def cmd_weigh(args) -> int:
    """Run the pipeline up to the token weights, then summarise and visualise them."""
    from kpod.config import load_config
    from kpod.pipeline import Pipeline
    from kpod.weighting.report import write_weighting_report

    overrides = parse_overrides(args.set)
    if args.run_dir:
        overrides["run_dir"] = args.run_dir
    overrides["train.method"] = "kpod"
    cfg = load_config(args.config, overrides)
    pipe = Pipeline(cfg, progress=not args.no_progress)
    pipe.prepare_weights()
    summary = write_weighting_report(pipe.paths.weighting_dir, n_show=args.show, seed=cfg.seed, keys=args.key)
    print(json.dumps(summary, indent=1))
    return 0


def cmd_data_stats(args) -> int:
    from kpod.data.datasets import split_counts

    print(json.dumps(split_counts(args.data_dir), indent=1))
    return 0


def cmd_data_rationales(args) -> int:
    from kpod.data.rationales import import_rationales
    from kpod.data.records import write_jsonl

    rationales, report = import_rationales(args.dataset, args.source, args.data_dir)
    if args.out:
        write_jsonl(args.out, (r.to_json() for r in rationales if r.correct or args.keep_wrong))
    print(json.dumps(report, indent=1))
    return 0


# `kpod teach` flags and the config fields they set (flags left out keep the YAML's or the default value).
_TEACH_FLAGS = {
    "dataset": "dataset", "split": "split", "file": "file", "answer_type": "answer_type", "data_dir": "data_dir",
    "limit": "limit", "backend": "backend", "model": "model", "mode": "mode", "base_url": "base_url",
    "api_key_env": "api_key_env", "n": "n", "temperature": "temperature", "top_p": "top_p", "seed": "seed",
    "max_tokens": "max_tokens", "concurrency": "concurrency", "batch_size": "batch_size", "timeout": "timeout_s",
    "max_retries": "retry.max_retries", "out": "out", "cache": "cache", "keep_wrong": "keep_wrong",
}  # fmt: skip


def cmd_teach(args) -> int:
    from kpod.teacher import FatalTeacherError, load_teach_config, run_teach

    overrides = {field: getattr(args, flag) for flag, field in _TEACH_FLAGS.items() if hasattr(args, flag)}
    if "file" in overrides:
        overrides.setdefault("dataset", "custom")
    overrides.update(parse_overrides(args.set))
    cfg = load_teach_config(args.config, overrides)
    try:
        summary = run_teach(cfg, progress=not args.no_progress)
    except FatalTeacherError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    if summary["samples"] and not summary["kept"]:
        failed = summary["dropped"]["failed"]
        print(f"error: no rationale kept of {summary['samples']} samples ({failed} failed: "
              f"{summary['requests']['failure_kinds'] or 'none'}; see {summary['outputs']['failures']} and "
              f"{summary['outputs']['rejected']})", file=sys.stderr)
        return 1
    return 0


def cmd_experiment(args) -> int:
    from kpod.experiment import run_experiment

    out = run_experiment(args.config, runs_root=args.runs_root, results_dir=args.results_dir, runner=args.runner,
                         device=args.device, methods=args.method or None, seeds=args.seed or None,
                         dry_run=args.dry_run, report_only=args.report_only, fail_fast=args.fail_fast,
                         progress=not args.no_progress, jobs=args.jobs)
    if args.dry_run:
        for c in out["cells"]:
            state = ("done (kept from the report)" if c["kept_from_report"] else "done" if c["done"]
                     else "to run" if c["selected"] else "not selected")
            print(f"{c['cell']:<40} {state}")
        return 0
    for text in out["tables"].values():
        print(text + "\n")
    print(f"results: {Path(args.results_dir) / (out['experiment'] + '.json')}")
    return 1 if any(r["status"] == "failed" for r in out["ran"]) else 0


def _add_experiment_parser(sub) -> None:
    x = sub.add_parser("experiment", help="a grid of methods x datasets x seeds (each a `kpod run`), then result tables",
                       description="Runs the unfinished cells of an experiment file, then writes results/NAME.json, "
                                   ".md and plots. See kpod.experiment for the file layout.")
    x.add_argument("config", help="experiment YAML (configs/experiments/*.yaml)")
    x.add_argument("--runs-root", default="runs", help="cells go to RUNS_ROOT/NAME/CELL (default runs)")
    x.add_argument("--results-dir", default="results", help="where NAME.json, NAME.md and the plots go")
    x.add_argument("--runner", choices=["subprocess", "in_process"], help="override the file's runner")
    x.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override the file's device")
    x.add_argument("--method", action="append", default=[], help="run only this method (repeatable); the report covers all")
    x.add_argument("--seed", action="append", type=int, default=[], help="run only this seed (repeatable)")
    x.add_argument("--dry-run", action="store_true", help="list the cells and whether they are done; run nothing")
    x.add_argument("--report-only", action="store_true", help="run nothing, write the report of the finished cells")
    x.add_argument("--fail-fast", action="store_true", help="stop at the first failed cell")
    x.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="run N cells at once, each its own process (several small students side by side on one GPU)")
    x.add_argument("--no-progress", action="store_true")
    x.set_defaults(fn=cmd_experiment)


def _add_teach_parser(sub) -> None:
    t = sub.add_parser("teach", help="zero-shot CoT teacher rationales from an LLM backend (cached, resumable)",
                       description="Flags override the YAML config; see kpod.teacher.config for every field.")
    t.add_argument("config", nargs="?", help="YAML teach config (optional)")
    keep = argparse.SUPPRESS  # an absent flag must not override the config file
    t.add_argument("--dataset", default=keep, help="gsm8k, asdiv, svamp, csqa")
    t.add_argument("--split", default=keep, choices=["train", "dev", "test"])
    t.add_argument("--file", default=keep, help="your own JSONL of questions instead of a benchmark")
    t.add_argument("--answer-type", default=keep, choices=["number", "choice"])
    t.add_argument("--data-dir", default=keep)
    t.add_argument("--limit", type=int, default=keep, help="only the first N questions")
    t.add_argument("--backend", default=keep, help="openai (default), hf, vllm")
    t.add_argument("--model", default=keep, help="API model name, or hub id / folder for hf and vllm")
    t.add_argument("--mode", default=keep, choices=["chat", "completion"], help="one chat turn, or the paper's two completion turns")
    t.add_argument("--base-url", default=keep, help="OpenAI-compatible base URL (default $OPENAI_BASE_URL)")
    t.add_argument("--api-key-env", default=keep, help="environment variable holding the API key (default OPENAI_API_KEY)")
    t.add_argument("--n", type=int, default=keep, help="rationales per question")
    t.add_argument("--temperature", type=float, default=keep)
    t.add_argument("--top-p", type=float, default=keep)
    t.add_argument("--seed", type=int, default=keep)
    t.add_argument("--max-tokens", type=int, default=keep, help="longest rationale in tokens")
    t.add_argument("--concurrency", type=int, default=keep, help="HTTP requests in flight")
    t.add_argument("--batch-size", type=int, default=keep, help="prompts per generate call (hf, vllm)")
    t.add_argument("--timeout", type=float, default=keep, help="seconds per HTTP request")
    t.add_argument("--max-retries", type=int, default=keep)
    t.add_argument("--out", default=keep, help="output folder (default runs/teach)")
    t.add_argument("--cache", default=keep, help="reply cache file (default OUT/cache.sqlite)")
    t.add_argument("--keep-wrong", action="store_true", default=keep, help="also write rationales with wrong answers")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="set any config field, e.g. prices.prompt_per_1k=0.0015")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(fn=cmd_teach)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kpod", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run the whole pipeline from a YAML config (resumes finished stages)")
    r.add_argument("config")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field, e.g. train.epochs=2; the value is read as YAML, so quote a string that "
                   "would read as a number or yes/no: name='\"2024\"'")
    r.add_argument("--run-dir", help="output folder (default runs/NAME)")
    r.add_argument("--zero-shot-cache", metavar="DIR",
                   help="folder shared by runs that differ only in training (e.g. seeds): each zero-shot evaluation "
                        "is computed once and reused (it is greedy, so the seed does not change it)")
    r.add_argument("--stage-cache", metavar="DIR",
                   help="folder shared by runs with the same data, student and seed (e.g. KPOD variants): token "
                        "weights and step difficulties are computed once and copied")
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(fn=cmd_run)

    e = sub.add_parser("eval", help="evaluate any model on any split")
    e.add_argument("--model", default="smollm2-135m-instruct", help="hub id, folder, or a shipped student (smollm2-135m-instruct, gemma3-270m)")
    e.add_argument("--adapter", help="LoRA adapter folder to apply (e.g. runs/NAME/train/final)")
    e.add_argument("--dataset", default="svamp")
    e.add_argument("--split", default="test", choices=["train", "dev", "test", "all"],
                   help="'all': train + dev + test (a benchmark the model did not train on)")
    e.add_argument("--file", help="evaluate on your own JSONL instead of a benchmark")
    e.add_argument("--answer-type", default="number", choices=["number", "choice"])
    e.add_argument("--data-dir")
    e.add_argument("--max-examples", type=int)
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--max-new-tokens", type=int, default=200)
    e.add_argument("--engine", default="hf", choices=["hf", "vllm"], help="vllm: GPU machines, pip install kpod[vllm]")
    e.add_argument("--method", default="", help="label written into the results")
    e.add_argument("--out", help="folder for predictions.jsonl and results.json")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(fn=cmd_eval)

    w = sub.add_parser("weigh", help="train the token weighting module of a config, then summarise and draw the weights")
    w.add_argument("config")
    w.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    w.add_argument("--run-dir")
    w.add_argument("--show", type=int, default=6, help="rationales to draw (random, seeded)")
    w.add_argument("--key", action="append", default=[], help="draw this rationale (its rationale_key); repeatable")
    w.add_argument("--no-progress", action="store_true")
    w.set_defaults(fn=cmd_weigh)

    sc = sub.add_parser("schedule", help="print the progressive schedule of a KPOD run, stage by stage")
    sc.add_argument("run_dir")
    sc.add_argument("--json", action="store_true", help="also print the per-stage records as JSON")
    sc.set_defaults(fn=cmd_schedule)

    d = sub.add_parser("data", help="datasets and released rationales")
    dsub = d.add_subparsers(dest="data_command", required=True)
    ds = dsub.add_parser("stats", help="print split counts of every dataset as JSON")
    ds.add_argument("--data-dir")
    ds.set_defaults(fn=cmd_data_stats)
    dr = dsub.add_parser("rationales", help="import a released teacher rationale set and report what was dropped")
    dr.add_argument("--dataset", required=True)
    dr.add_argument("--source", help="gpt35, palm or llama3 (default: the dataset's usual one)")
    dr.add_argument("--data-dir")
    dr.add_argument("--out", help="write the rationales (kpod format) to this JSONL")
    dr.add_argument("--keep-wrong", action="store_true", help="also write rationales with a wrong answer")
    dr.set_defaults(fn=cmd_data_rationales)

    _add_teach_parser(sub)
    _add_experiment_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    from kpod.config import ConfigError
    from kpod.data.records import DataError

    try:
        return args.fn(args)
    except (DataError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
