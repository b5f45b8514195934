"""`kpod run`: the whole pipeline into one run directory, each finished stage cached so a re-run resumes.

Stages: data (rationales, filtered and counted) -> encode (tokens, step spans) -> [KPOD: weigh -> difficulty ->
clusters -> schedule] -> [zero-shot eval] -> train (resumable Trainer checkpoints; the method's trainer and data come
from `kpod.baselines.registry`) -> eval (plus other datasets' splits: `eval.datasets`, out of distribution). A stage is
skipped when `stages.json` records it as done with the same config fingerprint; a changed setting re-runs that stage
and everything after it, except the evaluations, which no stage reads (a changed evaluation setting re-runs them
alone). Training resumes its newest checkpoint only when the checkpoints were written with the same settings
(`train/fingerprint.txt`); otherwise it starts over.

Under `accelerate launch` (several processes) every process runs this pipeline: the main process computes and writes
each cached artefact while the others wait, then all read the same files (so the KPOD schedule is one decision, made
once); step difficulty and evaluation are split between the processes; training is the Trainer's data parallelism.
The run directory must be on a filesystem that every process sees.

Runs that share their preparation (an experiment's KPOD variants, over its seeds) can share a `stage_cache` folder:
token weights and step difficulties are kept there by the fingerprint of everything they depend on, and a run whose
fingerprint is there copies them instead of computing them (about 6 of a KPOD cell's 30 minutes on 2 CPU cores).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from kpod import distributed as dist
from kpod.baselines.registry import MethodContext, get_method, prepare_training, trains_on_token_weights
from kpod.config import RunConfig, dump_config
from kpod.data.custom import load_user_jsonl
from kpod.data.datasets import load_split
from kpod.data.rationales import assert_no_leakage, import_rationales, normalise_text, without_answer_statements
from kpod.data.records import DataError, Question, Rationale, read_jsonl, write_jsonl
from kpod.distill.dataset import DistillDataset
from kpod.distill.examples import EncodedExample, encode_examples
from kpod.distill.trainer import build_trainer, peak_rss_mb, run_training
from kpod.evaluation.evaluate import evaluate_questions
from kpod.models import add_lora, is_seq2seq, load_student
from kpod.options import LaterOptions
from kpod.paths import RunPaths

log = logging.getLogger("kpod")


# ----------------------------------------------------------------------------- stage bookkeeping
def fingerprint(*parts) -> str:
    # Settings models leave out the options added later while those keep their old-behaviour values (kpod.options).
    blob = json.dumps([p.fingerprint_fields() if isinstance(p, LaterOptions) else
                       p.model_dump(mode="json") if hasattr(p, "model_dump") else p for p in parts], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class StageLog:
    """Which stages finished, with the fingerprint of the settings they ran with."""

    def __init__(self, path: Path):
        self.path = path
        self.done: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
        self._invalidated = False

    def is_done(self, stage: str, fp: str, leaf: bool = False) -> bool:
        """Whether `stage` finished with these settings. A stage that re-runs after a change re-runs every later one
        too (they ran on its old output), except a `leaf`: a stage whose output no later stage reads."""
        if self._invalidated:
            return False
        ok = self.done.get(stage) == fp
        if not ok and stage in self.done:
            log.info("stage %s: settings changed, re-running it%s", stage, "" if leaf else " and every later stage")
        if not ok and not leaf:
            self._invalidated = stage in self.done  # later stages ran on different inputs
        return ok

    @property
    def inputs_changed(self) -> bool:
        """An earlier stage re-ran with other settings in this run: what later stages wrote is stale."""
        return self._invalidated

    def mark(self, stage: str, fp: str) -> None:
        self.done[stage] = fp
        if dist.is_main():  # the other processes keep the same record in memory
            self.path.write_text(json.dumps(self.done, indent=1))


# ----------------------------------------------------------------------------- data
def files_digest(*paths: str | None) -> list[str]:
    """Content digests of the given files that exist (a user's data files, a `kpod teach` output): a file edited in
    place must re-run what read it. Empty for none, so fingerprints of runs on shipped data stay as they were."""
    out = []
    for path in paths:
        if path and Path(path).is_file():
            out.append(hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16])
    return out


def load_questions(cfg: RunConfig, split: str) -> list[Question]:
    d = cfg.data
    if d.dataset == "custom":
        path = {"train": d.train_file, "dev": d.dev_file, "test": d.test_file}[split]
        if path is None:
            raise DataError(f"custom dataset has no {split}_file")
        return load_user_jsonl(path, d.answer_type)[0]
    return load_split(d.dataset, split, d.data_dir)


def encode_for(cfg: RunConfig, tokenizer, questions: dict[str, Question], rationales: list[Rationale],
               progress: bool = True) -> tuple[list[EncodedExample], dict]:
    """The run's training examples from its questions and kept rationales, in its data settings' formats."""
    d = cfg.data
    return encode_examples(tokenizer, questions, rationales, prompt_template=d.prompt_template,
                           target_template=d.target_template, splitter=d.splitter, max_length=d.max_length,
                           progress=progress, answer_choice_text=d.answer_choice_text)


def answer_kind(cfg: RunConfig) -> str:
    return cfg.data.answer_type if cfg.data.dataset == "custom" else cfg.data.dataset


def collect_rationales(cfg: RunConfig) -> tuple[list[Question], list[Rationale], dict]:
    """Training questions and their kept rationales, with a report of every count and drop."""
    d = cfg.data
    if d.dataset == "custom":
        questions, rationales = load_user_jsonl(d.train_file, d.answer_type)
        report = {"dataset": "custom", "source": d.train_file, "rationales": len(rationales)}
        if d.rationale_source:  # a `kpod teach --file` output for these questions, beside any written in the file
            ids = {q.id for q in questions}
            taught = [Rationale.from_json(row) for _, row in read_jsonl(d.rationale_source)]
            report.update(source=[d.train_file, d.rationale_source], rationales_in_train_file=len(rationales),
                          rationale_source_not_in_train_file=sum(r.id not in ids for r in taught))
            rationales += [r for r in taught if r.id in ids]
            report["rationales"] = len(rationales)
        assert_custom_splits_apart(d, questions)
    else:
        questions = load_split(d.dataset, "train", d.data_dir)
        if d.rationale_source and Path(d.rationale_source).suffix == ".jsonl":
            rationales = [Rationale.from_json(row) for _, row in read_jsonl(d.rationale_source)]
            report = {"dataset": d.dataset, "source": d.rationale_source, "rationales": len(rationales)}
        else:
            rationales, report = import_rationales(d.dataset, d.rationale_source, d.data_dir)
        assert_no_leakage(rationales, d.dataset, d.data_dir)
    counterfactual = [r.id for r in rationales if (r.meta.get("rationalized") or {}).get("target") == "perturbed"]
    if counterfactual:  # they explain another answer than the question's: a target would pair them wrongly
        raise DataError(f"{len(counterfactual)} rationales of {d.rationale_source} explain a perturbed answer "
                        f"(kpod teach with rationalize.target 'perturbed'), e.g. {counterfactual[:3]}: give them to "
                        "baselines.scott.counterfactual_rationales, not data.rationale_source")
    if d.max_train_questions:
        questions = questions[: d.max_train_questions]
        keep = {q.id for q in questions}
        rationales = [r for r in rationales if r.id in keep]
    if d.only_correct:
        report["dropped_wrong_answer_total"] = sum(not r.correct for r in rationales)
        rationales = [r for r in rationales if r.correct]
    disagreeing = [r for r in rationales if r.meta.get("text_agrees") is False]
    report["text_disagrees_with_stated_answer"] = len(disagreeing)  # counted whether or not they are dropped
    if d.require_text_agrees:
        rationales = [r for r in rationales if r.meta.get("text_agrees") is not False]
    if d.rationales_per_question:
        per_q: dict[str, list[Rationale]] = defaultdict(list)
        # Prefer rationales whose own text reaches the answer (where the release states it separately).
        for r in sorted(rationales, key=lambda r: not r.meta.get("text_agrees", True)):
            per_q[r.id].append(r)
        report["dropped_over_rationales_per_question"] = sum(max(0, len(v) - d.rationales_per_question) for v in per_q.values())
        rationales = [r for v in per_q.values() for r in v[: d.rationales_per_question]]
    if d.strip_answer_statement:
        rationales, report["answer_statements_cut"] = without_answer_statements(rationales)
    report["kept_rationales"] = len(rationales)
    report["kept_questions"] = len({r.id for r in rationales})
    report["train_questions_used"] = len(questions)
    if not rationales:
        raise DataError(f"no rationale to train on: {json.dumps(report)} (a custom file needs 'rationale' fields or "
                        "data.rationale_source, a `kpod teach` output; only_correct drops those whose answer kpod "
                        "reads as another than the gold one)")
    return questions, rationales, report


def assert_custom_splits_apart(d, train: list[Question]) -> None:
    """A custom test or dev file must not share a question text with the training file (ids are not compared: the
    default ids FILE-STEM-LINE of two files named alike are equal)."""
    keys = {normalise_text(q.question) for q in train}
    for split, path in (("dev", d.dev_file), ("test", d.test_file)):
        if path is None or not Path(path).exists():
            continue
        held = load_user_jsonl(path, d.answer_type)[0]
        shared = [q.id for q in held if normalise_text(q.question) in keys]
        if shared:
            raise DataError(f"{path}: {len(shared)} {split} questions are also in {d.train_file} (the same text), "
                            f"e.g. {shared[:3]}: a model trained on them would be tested on them")


# ----------------------------------------------------------------------------- the pipeline
class Pipeline:
    def __init__(self, cfg: RunConfig, progress: bool = True, zero_shot_cache: str | Path | None = None,
                 stage_cache: str | Path | None = None):
        """`zero_shot_cache`: a folder shared by runs (an experiment's seeds) where zero-shot evaluations are kept
        by what decides them; greedy decoding makes them independent of the seed, so each is computed once.
        `stage_cache`: a folder shared by runs where token weights and step difficulties are kept by fingerprint."""
        self.cfg = cfg
        self.zero_shot_cache = Path(zero_shot_cache) if zero_shot_cache else None
        self.stage_cache = Path(stage_cache) if stage_cache else None
        self.reused: dict[str, str] = {}  # stage -> the shared-cache entry it was copied from
        self.paths = RunPaths(cfg.resolved_run_dir())
        self.paths.root.mkdir(parents=True, exist_ok=True)
        self.stages = StageLog(self.paths.stages)
        dist.barrier()  # every process has read stages.json before the main one changes it: all decide alike
        self.progress = progress and dist.is_main()
        self.timings: dict[str, float] = {}
        self.peak_rss_mb: dict[str, float] = {}  # process peak resident memory after each stage ran
        if cfg.train.torch_threads:
            torch.set_num_threads(cfg.train.torch_threads)
        torch.manual_seed(cfg.seed)

    # Each stage: fingerprint of what it depends on, then work unless cached.
    def cached(self, stage: str, fp: str, work, every_process: bool = False, output: Path | None = None,
               shared_key: str | None = None, leaf: bool = False) -> None:
        """Run `work()` unless `stage` already finished with the same fingerprint; time it and record it.

        Under several processes only the main process runs `work` (the others wait, then read what it wrote), unless
        `every_process`: then each runs it (the work shares itself out and the main process writes the result).
        With a stage cache, `output` (the file or folder `work` writes) is copied from / published to the cache entry
        `STAGE/shared_key`; the key must name everything the output depends on, inputs from earlier stages included.
        `leaf`: no later stage reads the output (a change re-runs this stage alone).
        """
        if self.stages.is_done(stage, fp, leaf):
            return
        t0 = time.time()
        entry = self.stage_cache / stage / shared_key if self.stage_cache and output and shared_key else None
        if entry is not None and (entry / "complete").exists():
            if dist.is_main():
                _copy(entry / output.name, output)
            self.reused[stage] = str(entry)
            log.info("%s: reused from %s", stage, entry)
        else:
            if every_process or dist.is_main():
                work()
            if entry is not None and dist.is_main():
                _publish(output, entry)
        dist.barrier()
        self.timings[stage] = time.time() - t0
        self.peak_rss_mb[stage] = peak_rss_mb()
        self.stages.mark(stage, fp)

    def stage_data(self) -> tuple[dict[str, Question], list[Rationale]]:
        def work():
            questions, rationales, report = collect_rationales(self.cfg)
            write_jsonl(self.paths.rationales, (r.to_json() for r in rationales))
            write_jsonl(self.paths.data_dir / "train_questions.jsonl", (q.to_json() for q in questions))
            self.paths.data_report.write_text(json.dumps(report, indent=1))
            log.info("data: %s", json.dumps(report))

        d = self.cfg.data
        self.cached("data", fingerprint(d, *files_digest(d.train_file, d.rationale_source)), work)
        questions = {row["id"]: Question(**row) for _, row in read_jsonl(self.paths.data_dir / "train_questions.jsonl")}
        rationales = [Rationale.from_json(row) for _, row in read_jsonl(self.paths.rationales)]
        return questions, rationales

    def stage_encode(self, tokenizer, questions, rationales) -> list[EncodedExample]:
        def work():
            examples, report = encode_for(self.cfg, tokenizer, questions, rationales, self.progress)
            write_jsonl(self.paths.examples, (e.to_json() for e in examples))
            (self.paths.data_dir / "encode_report.json").write_text(json.dumps(report, indent=1))
            log.info("encode: %s", json.dumps(report))

        self.cached("encode", fingerprint(self.cfg.data, self.cfg.student.name), work)
        return [EncodedExample(**{**row, "step_spans": [tuple(s) for s in row["step_spans"]]})
                for _, row in read_jsonl(self.paths.examples)]

    def _train_fingerprint(self) -> str:
        cfg = self.cfg
        return fingerprint(cfg.data, cfg.student, cfg.train.fingerprint_fields(), cfg.seed,
                           get_method(cfg.train.method).settings(cfg))

    def _eval_fingerprint(self, label: str) -> str:
        # a trained model is evaluated again whenever it is trained with other settings (the method's included)
        trained_with = self._train_fingerprint() if label != "zero-shot" else None
        # (eval options added later are left out at their old-behaviour values: older runs keep their cached results)
        eval_cfg = self.cfg.eval.fingerprint_fields()
        held_out = files_digest(self.cfg.data.dev_file, self.cfg.data.test_file)  # a user's test file edited in place
        return fingerprint(self.cfg.data, eval_cfg, self.cfg.student, trained_with, self.cfg.seed, label, *held_out)

    def stage_eval(self, label: str, model, tokenizer, method: str) -> list[dict]:
        fp = self._eval_fingerprint(label)
        results = []
        model = model.to(dist.device())  # each process generates for its shard of the questions on its device
        for dataset, split, name, kind, questions in self._eval_targets(label):
            path = self.paths.eval_results(name)
            shared = self._zero_shot_entry(kind, questions) if label == "zero-shot" else None
            if self.stages.is_done(f"eval:{name}", fp, leaf=True) and path.exists():  # no stage reads an evaluation
                if shared is not None and not (shared / "results.json").exists():
                    self._share_zero_shot(shared, name)  # a run from before the cache: its result serves the others
                results.append(json.loads(path.read_text()))
                continue
            if shared is not None and (shared / "results.json").exists():
                res = self._reuse_zero_shot(shared, name)
                self.stages.mark(f"eval:{name}", fp)
                results.append(res)
                continue
            t0 = time.time()
            res = evaluate_questions(
                model, tokenizer, questions, dataset=kind, split=split,
                out_dir=self.paths.eval_dir(name), method=method, model_name=self.cfg.student.name,
                seed=self.cfg.seed, prompt_template=self.cfg.data.prompt_template,
                batch_size=self.cfg.eval.batch_size, max_new_tokens=self.cfg.eval.max_new_tokens,
                progress=self.progress, engine=self.cfg.eval.engine, engine_dir=self.paths.root / "eval" / f"{label}-vllm-model",
            )
            self.timings[f"eval:{name}"] = time.time() - t0
            self.peak_rss_mb[f"eval:{name}"] = peak_rss_mb()
            self.stages.mark(f"eval:{name}", fp)
            log.info("%s: accuracy %.2f %% (%d/%d)", name, res["accuracy"], res["correct"], res["n"])
            if shared is not None:
                self._share_zero_shot(shared, name)
            results.append(res)
        return results

    def _eval_targets(self, label: str):
        """(dataset, split, result name, answer kind, questions) of every evaluation after a run's training."""
        own, e = self.cfg.data.dataset, self.cfg.eval
        other_splits = e.splits if e.other_splits is None else e.other_splits
        for dataset, split in [(own, s) for s in e.splits] + [
                (d, s) for d in e.datasets if d != own for s in other_splits]:
            name = f"{label}-{split}" if dataset == own else f"{label}-{dataset}-{split}"
            questions = (load_questions(self.cfg, split) if dataset == own
                         else load_split(dataset, split, self.cfg.data.data_dir))[: self.cfg.eval.max_examples]
            yield dataset, split, name, answer_kind(self.cfg) if dataset == own else dataset, questions

    def share_finished_zero_shot(self) -> int:
        """Put this run's finished zero-shot evaluations into the shared cache (for runs made before it existed);
        returns how many were added."""
        added, fp = 0, self._eval_fingerprint("zero-shot")
        for _, _, name, kind, questions in self._eval_targets("zero-shot") if self.cfg.eval.zero_shot else ():
            shared = self._zero_shot_entry(kind, questions)
            finished = self.stages.done.get(f"eval:{name}") == fp and self.paths.eval_results(name).exists()
            if shared is not None and finished and not (shared / "results.json").exists():
                self._share_zero_shot(shared, name)
                added += 1
        return added

    def _zero_shot_entry(self, kind: str, questions: list[Question]) -> Path | None:
        """The shared-cache folder of one zero-shot evaluation, named by everything that decides its outputs: the
        student, the generation settings, the prompt and the questions (not the seed: decoding is greedy)."""
        if self.zero_shot_cache is None:
            return None
        e = self.cfg.eval
        key = fingerprint(self.cfg.student.name, e.batch_size, e.max_new_tokens, e.engine,
                          self.cfg.data.prompt_template, kind, [q.to_json() for q in questions])
        return self.zero_shot_cache / key

    def _share_zero_shot(self, shared: Path, name: str) -> None:
        if not dist.is_main():
            return
        shared.mkdir(parents=True, exist_ok=True)
        for f in ("predictions.jsonl", "results.json"):  # results.json last: it marks the entry complete
            tmp = shared / f"{f}.tmp-{os.getpid()}"  # per process: seeds side by side share this entry
            tmp.write_bytes((self.paths.eval_dir(name) / f).read_bytes())
            tmp.replace(shared / f)

    def _reuse_zero_shot(self, shared: Path, name: str) -> dict:
        res = json.loads((shared / "results.json").read_text())
        res["reused_from"] = str(shared)
        if dist.is_main():
            out = self.paths.eval_dir(name)
            out.mkdir(parents=True, exist_ok=True)
            (out / "predictions.jsonl").write_bytes((shared / "predictions.jsonl").read_bytes())
            (out / "results.json").write_text(json.dumps(res, indent=1))
        log.info("%s: accuracy %.2f %% (%d/%d), reused from %s", name, res["accuracy"], res["correct"], res["n"], shared)
        return res

    # ------------------------------------------------------------------ KPOD preparation
    def stage_weights(self, tokenizer, questions, examples) -> list[np.ndarray]:
        from kpod.curriculum import stages as ks

        cfg = self.cfg

        def work():
            torch.manual_seed(cfg.seed)
            predictor, _ = load_student(cfg.student.name)  # a separate copy: the student stays un-distilled
            predictor = predictor.to(dist.device())  # on a GPU machine the mask learning runs there, not on the CPU
            ks.run_weighting(tokenizer, examples, questions, predictor, cfg.kpod, self.paths.weighting_dir,
                             self.progress, answer_choice_text=cfg.data.answer_choice_text,
                             template=cfg.data.target_template)

        self.cached("weigh", self._weigh_fingerprint(), work, output=self.paths.weighting_dir,
                    shared_key=self._weights_key())
        return ks.load_weights(self.paths.token_weights, examples)

    def _weigh_fingerprint(self) -> str:
        """The weigh stage's record in stages.json. It names the run's seed, which the weights do not depend on; kept
        as it is because a changed record re-runs every later stage of a finished run."""
        cfg = self.cfg
        return fingerprint(cfg.data, cfg.student.name, cfg.kpod.weighting, cfg.seed)

    def _weights_key(self) -> str:
        """What the token weights depend on, and so their shared-cache key: the data, the student and the weighting
        settings, whose own `seed` seeds every draw of the stage (not the run's seed: an experiment's seeds share one
        set of weights unless the experiment sets `seed_token_weighting`)."""
        cfg = self.cfg
        return fingerprint(cfg.data, cfg.student.name, cfg.kpod.weighting)

    def stage_kpod(self, model, tokenizer, questions, examples) -> tuple[list | None, np.ndarray]:
        """Token weights (or None for w.o.-sig) and the (stages, N) schedule of given steps."""
        from kpod.curriculum import stages as ks

        cfg, k, paths = self.cfg, self.cfg.kpod, self.paths
        weights = self.stage_weights(tokenizer, questions, examples) if k.token_weights else None
        difficulty = paths.curriculum_dir / "difficulty.json"
        clusters_path, schedule_path = paths.curriculum_dir / "clusters.json", paths.curriculum_dir / "schedule.json"
        difficulty_fp = fingerprint(cfg.data, cfg.student.name, k.token_weights, k.weighting, k.weighted_difficulty)
        # shared between runs: the weights it reads come from a seeded stage, so their fingerprint is part of the key
        self.cached("difficulty", difficulty_fp,
                    lambda: ks.run_difficulty(model.to(dist.device()), tokenizer, examples, weights, k, difficulty,
                                              self.progress), every_process=True, output=difficulty,
                    shared_key=fingerprint(difficulty_fp, self._weights_key() if k.token_weights else None))
        diffs = ks.load_difficulty(difficulty, examples)
        self.cached("clusters", fingerprint(cfg.data, k.clusters, cfg.seed),
                    lambda: ks.run_clusters(examples, questions, k, cfg.seed, clusters_path))
        clusters = ks.load_clusters(clusters_path, examples)
        self.cached("schedule", fingerprint(cfg.data, cfg.student.name, k, cfg.train.epochs, cfg.seed),
                    lambda: ks.run_schedule(diffs, clusters, cfg, schedule_path))
        return weights, ks.load_schedule(schedule_path)

    def stage_train(self, model, tokenizer, examples: list[EncodedExample], weights=None, given_steps=None):
        cfg = self.cfg
        fp = self._train_fingerprint()
        if self.stages.is_done("train", fp) and self.paths.final_model.exists():
            return self._load_final(model)
        self._drop_stale_checkpoints(fp)
        if cfg.student.lora.enabled:
            lo = cfg.student.lora
            model = add_lora(model, lo.rank, lo.alpha, lo.dropout, lo.targets)
        seq2seq = is_seq2seq(model.get_base_model() if hasattr(model, "get_base_model") else model)
        ctx = MethodContext(cfg, model, tokenizer, examples, weights, given_steps, self.paths, seq2seq)
        setup = prepare_training(ctx)
        dataset = DistillDataset(
            setup.examples, seq2seq=seq2seq, token_weights=setup.token_weights,
            decoder_start_token_id=getattr(model.config, "decoder_start_token_id", None),
        )
        trainer = build_trainer(model, tokenizer, dataset, cfg.train, self.paths.train_dir, cfg.seed,
                                trainer_cls=setup.trainer_cls, **setup.trainer_kwargs)
        summary = run_training(trainer, self.paths.train_dir, self.paths.final_model)
        self.timings["train"] = summary["train_wall_s"]
        self.peak_rss_mb["train"] = peak_rss_mb()
        log.info("train: %d steps, %.1f s, %.1f tokens/s", summary["global_steps"], summary["train_wall_s"],
                 summary["train_tokens_per_s"] or 0)
        self.stages.mark("train", fp)
        if dist.world_size() > 1:
            # The Trainer's model may be sharded (FSDP, ZeRO-3); every process reads the saved final model instead.
            dist.barrier()
            return self._load_final(self._load_student()[0])
        return trainer.model

    def _drop_stale_checkpoints(self, fp: str) -> None:
        """Training resumes only the same training: checkpoints written with other settings, or before an earlier
        stage re-ran, are deleted (the Trainer would continue them, or find them finished and train nothing)."""
        train_dir = self.paths.train_dir
        marker = train_dir / "fingerprint.txt"
        written_with = marker.read_text().strip() if marker.exists() else self.stages.done.get("train")
        if dist.is_main():
            old = [path for path in (*train_dir.glob("checkpoint-*"), self.paths.final_model) if path.exists()]
            if old and (self.stages.inputs_changed or written_with not in (None, fp)):
                log.warning("train: settings or inputs changed since %s was written; training from the start",
                            ", ".join(sorted(path.name for path in old)))
                for path in old:
                    shutil.rmtree(path)
            train_dir.mkdir(parents=True, exist_ok=True)
            marker.write_text(fp)
        dist.barrier()

    def _load_final(self, base_model):
        if self.cfg.student.lora.enabled:
            from peft import PeftModel

            return PeftModel.from_pretrained(base_model, str(self.paths.final_model))
        return type(base_model).from_pretrained(str(self.paths.final_model))

    def _load_student(self):
        with dist.main_first(local=True):  # the default student is converted once per machine, by one process
            return load_student(self.cfg.student.name)

    def _dump_config(self) -> None:
        if dist.is_main():
            dump_config(self.cfg, self.paths.config)

    def prepare_weights(self):
        """Data, encoding and token weights only (for `kpod weigh`)."""
        self._dump_config()
        questions, rationales = self.stage_data()
        model, tokenizer = self._load_student()
        examples = self.stage_encode(tokenizer, questions, rationales)
        return self.stage_weights(tokenizer, questions, examples)

    def run(self) -> dict:
        cfg = self.cfg
        self._dump_config()
        t_start = time.time()
        for _ in self._eval_targets("check"):  # a missing test file fails now, not after training
            pass
        questions, rationales = self.stage_data()
        model, tokenizer = self._load_student()
        examples = self.stage_encode(tokenizer, questions, rationales)
        summary: dict = {"name": cfg.name, "method": cfg.train.method, "run_dir": str(self.paths.root)}
        weights = given_steps = None
        if cfg.train.method == "kpod":
            weights, given_steps = self.stage_kpod(model, tokenizer, questions, examples)
        elif trains_on_token_weights(cfg):
            weights = self.stage_weights(tokenizer, questions, examples)
        if cfg.eval.zero_shot:
            summary["zero_shot"] = self.stage_eval("zero-shot", model, tokenizer, "zero-shot CoT (no distillation)")
        model = self.stage_train(model, tokenizer, examples, weights, given_steps)
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()  # plain weights decode faster than an adapter
        summary["results"] = self.stage_eval(cfg.train.method, model, tokenizer, method_label(cfg))
        summary["timings_s"] = {k: round(v, 1) for k, v in self.timings.items()}
        if self.reused:
            summary["reused_stages"] = self.reused
        summary["peak_rss_mb_after_stage"] = self.peak_rss_mb
        summary["wall_s"] = round(time.time() - t_start, 1)
        if dist.is_main():
            (self.paths.root / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        return summary


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst, dirs_exist_ok=True)
    else:
        shutil.copy2(src, dst)


def _publish(output: Path, entry: Path) -> None:
    """Copy a stage's output into its shared-cache entry, marked usable by its `complete` file. The copy is made in a
    folder of this process and renamed into place, so that runs side by side (`kpod experiment --jobs`) never read a
    half-copied entry: the first to finish publishes, and the others, with the same output, leave it as it is."""
    if (entry / "complete").exists():
        return
    tmp = entry.with_name(f"{entry.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    _copy(output, tmp / output.name)
    (tmp / "complete").write_text(time.strftime("%Y-%m-%d %H:%M:%S"))
    if entry.exists() and not (entry / "complete").exists():  # what a run killed while publishing left
        shutil.rmtree(entry, ignore_errors=True)
    try:
        tmp.rename(entry)
    except OSError:  # another run published it first
        shutil.rmtree(tmp, ignore_errors=True)


def method_label(cfg: RunConfig) -> str:
    return get_method(cfg.train.method).label
