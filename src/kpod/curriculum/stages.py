"""KPOD's preparation stages, each a function from the encoded examples to one artefact in the run directory:

weigh      token significance weights (Sec. 3.3)           -> weighting/weights.jsonl, weighting/stats.json
difficulty step difficulties with the un-distilled student  -> curriculum/difficulty.json
clusters   GloVe + K-means question clusters               -> curriculum/clusters.json
schedule   D(t) and per-stage c_i(t) with FTGP             -> curriculum/schedule.json (+ schedule.png)

The pipeline (`kpod.pipeline`) calls them in order and caches each. Under several processes the pipeline runs them
on the main process only, except step difficulty, which every process scores a shard of (`kpod.distributed`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np

from kpod import distributed as dist
from kpod.config import KpodSettings, RunConfig
from kpod.curriculum.clusters import cluster_questions
from kpod.curriculum.difficulty import step_difficulties, target_token_nll
from kpod.curriculum.schedule import compute_schedule
from kpod.data.prompts import DEFAULT_TARGET, answer_statement, target_answer
from kpod.data.records import Question
from kpod.distill.examples import EncodedExample
from kpod.models import is_seq2seq
from kpod.weighting.artefact import WeightedRationale, load_weights_jsonl, save_weights_jsonl, token_strings
from kpod.weighting.config import WeightingExample
from kpod.weighting.report import write_weighting_report
from kpod.weighting.train import train_token_weighting

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- weigh
def weighting_examples(tokenizer, examples: list[EncodedExample], questions: dict[str, Question],
                       seq2seq: bool = False, answer_choice_text: bool = False,
                       template: str = DEFAULT_TARGET) -> list[WeightingExample]:
    """The predictor reads [question prompt][masked rationale prefix][cue][answer] (answer scored; stated as the
    targets state it: the target `template`'s format, `answer_choice_text`).

    seq2seq: for an encoder-decoder predictor, whose encoder reads question, rationale and cue as one input; the
    end token that its tokenizer puts after the prompt (T5's "</s>") is left out here and follows the cue instead
    (`answer_cue_ids`), where the model was trained to see it.
    """
    eos = tokenizer.eos_token_id
    answer_format = answer_statement(template)[1]
    out = []
    for ex in examples:
        answer = target_answer(questions[ex.question_id], answer_choice_text)
        answer_ids = tokenizer(answer_format.format(answer=answer), add_special_tokens=False).input_ids
        question_ids = ex.prompt_ids
        if seq2seq and question_ids and question_ids[-1] == eos:
            question_ids = question_ids[:-1]
        out.append(WeightingExample(question_ids, ex.target_ids[: ex.answer_start], answer_ids))
    return out


def answer_cue_ids(tokenizer, seq2seq: bool = False, template: str = DEFAULT_TARGET) -> list[int]:
    """The ids of the target `template`'s cue between rationale and answer (" Therefore, the answer is"); an
    encoder-decoder's encoder input ends with it, and so with the end token."""
    cue = answer_statement(template)[0]
    ids = tokenizer(cue, add_special_tokens=False).input_ids if cue else []
    if seq2seq and tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    return ids


def weighted_rationales(tokenizer, examples: list[EncodedExample], weights: list[np.ndarray]):
    """One artefact row per example: its rationale tokens (the target before the answer) with their weights."""
    for ex, w in zip(examples, weights):
        ids = ex.target_ids[: ex.answer_start]
        yield WeightedRationale(ex.key, token_strings(tokenizer, ids), ids, w.tolist(), [list(s) for s in ex.step_spans])


def run_weighting(tokenizer, examples, questions, predictor, settings: KpodSettings, out_dir: Path,
                  progress: bool = True, answer_choice_text: bool = False,
                  template: str = DEFAULT_TARGET) -> list[np.ndarray]:
    t0 = time.time()
    seq2seq = is_seq2seq(predictor)
    cue = answer_cue_ids(tokenizer, seq2seq, template)
    inputs = weighting_examples(tokenizer, examples, questions, seq2seq, answer_choice_text, template)
    weights, stats = train_token_weighting(
        inputs, predictor.get_input_embeddings(), predictor, settings.weighting, answer_cue_ids=cue, progress=progress,
    )
    stats["wall_s"] = round(time.time() - t0, 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_weights_jsonl(out_dir / "weights.jsonl", weighted_rationales(tokenizer, examples, weights))
    (out_dir / "stats.json").write_text(json.dumps(stats, indent=1, default=str))
    write_weighting_report(out_dir, seed=settings.weighting.seed)
    log.info("weighting: %.0f s, mean weight %.3f, std %.3f", stats["wall_s"], stats.get("mean_weight", float("nan")),
             stats.get("weight_std", float("nan")))
    return weights


def load_weights(path: Path, examples: list[EncodedExample]) -> list[np.ndarray]:
    by_key = {row.rationale_key: np.asarray(row.weights, dtype=np.float32) for row in load_weights_jsonl(path)}
    missing = [ex.key for ex in examples if ex.key not in by_key]
    if missing:
        raise ValueError(f"{path}: no weights for {len(missing)} examples, e.g. {missing[:3]}")
    return [by_key[ex.key] for ex in examples]


# ----------------------------------------------------------------------------- difficulty
def run_difficulty(model, tokenizer, examples, weights, settings: KpodSettings, path: Path,
                   progress: bool = True) -> list[np.ndarray]:
    """Step difficulties of every example; every process of a launched run scores its shard of the examples and
    the main process writes the gathered result."""
    t0 = time.time()
    nll = dist.map_sharded(
        lambda part: target_token_nll(model, tokenizer, part, settings.difficulty_batch_size, progress), examples)
    uniform = not settings.weighted_difficulty or weights is None
    diffs = [
        step_difficulties(n[: ex.answer_start], None if weights is None else weights[i], ex.step_spans, uniform)
        for i, (ex, n) in enumerate(zip(examples, nll))
    ]
    if dist.is_main():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"uniform_within_step": uniform, "wall_s": round(time.time() - t0, 1),
                                    "processes": dist.world_size(),
                                    "difficulties": {ex.key: d.round(6).tolist() for ex, d in zip(examples, diffs)}}))
    log.info("difficulty: %.0f s, total B = %.1f", time.time() - t0, sum(float(d.sum()) for d in diffs))
    return diffs


def load_difficulty(path: Path, examples) -> list[np.ndarray]:
    table = json.loads(path.read_text())["difficulties"]
    return [np.asarray(table[ex.key], dtype=np.float64) for ex in examples]


# ----------------------------------------------------------------------------- clusters and schedule
def run_clusters(examples, questions: dict[str, Question], settings: KpodSettings, seed: int, path: Path) -> np.ndarray:
    ids = sorted({ex.question_id for ex in examples})
    labels = cluster_questions([questions[i].question for i in ids], k=settings.clusters, seed=seed)
    by_id = dict(zip(ids, labels.tolist()))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"k": settings.clusters, "seed": seed, "labels": by_id,
                                "sizes": np.bincount(labels).tolist()}))
    return np.asarray([by_id[ex.question_id] for ex in examples], dtype=np.int64)


def load_clusters(path: Path, examples) -> np.ndarray:
    by_id = json.loads(path.read_text())["labels"]
    return np.asarray([by_id[ex.question_id] for ex in examples], dtype=np.int64)


def num_stages(cfg: RunConfig) -> int:
    return cfg.kpod.stages or max(1, math.ceil(cfg.train.epochs))


def steps_per_stage(total_steps: int, stages: int) -> int:
    """Optimiser steps per stage, as the staged trainers split a run (the last stage may get fewer)."""
    return max(1, math.ceil(total_steps / stages))


def stage_coverage(total_steps: int, per_stage: int, complete: list[bool], method: str,
                   what: str = "trains the whole rationale", key: str = "whole_target_trained") -> dict:
    """Which stages a run's optimiser steps reach (stage = min(step // per_stage, S - 1), as the staged trainers
    count) and whether one of them is `complete` (trains every target whole; for the example curricula, selects
    every example). Warns when none is: with one stage, too few steps, or T at or after the last stage reached, the
    student never learns what evaluation asks of it (a whole rationale from the question alone)."""
    reached = min(len(complete), math.ceil(total_steps / max(1, per_stage)))
    done = any(complete[:reached])
    if not done:
        log.warning("%s: none of the %d stage(s) that %d optimiser steps reach (of %d) %s. Train more epochs, or set "
                    "kpod.stages >= 2 and kpod.full_difficulty_stage below the stages reached.", method, reached,
                    total_steps, len(complete), what)
    return {"stages_reached": reached, key: done}


def run_schedule(diffs: list[np.ndarray], clusters: np.ndarray, cfg: RunConfig, path: Path) -> np.ndarray:
    s = cfg.kpod
    sched = compute_schedule(
        np.concatenate(diffs) if diffs else np.zeros(0), np.asarray([len(d) for d in diffs]), clusters,
        num_stages(cfg), c0_fraction=s.c0_fraction, p=s.p, T=s.full_difficulty_stage, delta_s=s.delta_s,
        beta=s.beta, eps=s.ftgp_eps, seed=cfg.seed, progressive=s.progressive, scan_order=s.scan_order,
        zero_cost=s.zero_cost,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(sched.to_dict(include_given_steps=True), default=float))
    try:
        from kpod.curriculum.inspect import plot_schedule

        plot_schedule(sched.to_dict(), path.with_suffix(".png"))
    except ImportError:  # plotting is an optional extra
        pass
    return sched.given_steps


def load_schedule(path: Path) -> np.ndarray:
    return np.asarray(json.loads(path.read_text())["given_steps"], dtype=np.int64)
