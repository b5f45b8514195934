"""How the learned token weights move during a long weighting run, per weighting seed: does training longer than the
default 30 steps settle every seed on the same weights, and on the paper's (digits and operators kept, filler masked)?

For each seed, train the weighting module once for the config's `kpod.weighting.max_steps` (default here 120, four
times the default run) on the real training rationales against the frozen student, and every `--every` steps weight
every rationale with the module as it is then (the deterministic w = sigmoid(f_w(e)), as the stage does at the end)
and take the mean weight per token class. The temperature anneals over the whole run, so the snapshot at step 30 is
not what a 30-step run ends with; the last snapshot is exactly what a run of that length would use.

    KPOD_DATA_DIR=path/to/data python bench/weighting_trajectory.py --set data.dataset=gsm8k \
        --set kpod.weighting.lr=0.003 --out results/weighting_trajectory_gsm8k_lr3e-3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from kpod.cli import parse_overrides  # noqa: E402
from kpod.config import load_config  # noqa: E402
from kpod.curriculum.stages import answer_cue_ids, weighted_rationales, weighting_examples  # noqa: E402
from kpod.evaluation.evaluate import git_commit, machine  # noqa: E402
from kpod.models import is_seq2seq, load_student  # noqa: E402
from kpod.pipeline import Pipeline  # noqa: E402
from kpod.weighting.summary import TOKEN_CLASSES, summarize_weights  # noqa: E402
from kpod.weighting.train import fit_weighting_module, predict_token_weights  # noqa: E402

# The classes the paper's Figure 2 contrasts: keypoints against the words around them.
SHOWN_CLASSES = ("digit", "operator", "cue_word", "other_word", "punctuation")


def snapshot(module, tok, examples, weighting_inputs, batch_size: int) -> dict:
    """Mean weight per token class (and overall mean and spread) of every rationale under the module as it is now."""
    weights = predict_token_weights(module, [e.rationale_ids for e in weighting_inputs], batch_size)
    s = summarize_weights(weighted_rationales(tok, examples, weights))
    return {"mean_weight": round(s["mean_weight"], 4), "weight_std": round(s["weight_std"], 4),
            "classes": {c: s["classes"][c]["mean_weight"] for c in TOKEN_CLASSES}}


def run_seed(cfg, seed: int, tok, model, examples, questions, every: int) -> dict:
    wcfg = cfg.kpod.weighting.model_copy(update={"seed": seed})
    trace: list[dict] = []
    seq2seq = is_seq2seq(model)
    weighting_inputs = weighting_examples(tok, examples, questions, seq2seq, cfg.data.answer_choice_text,
                                          cfg.data.target_template)

    def on_step(step: int, module) -> None:
        if (step + 1) % every == 0 or step + 1 == wcfg.max_steps:
            trace.append({"step": step + 1, **snapshot(module, tok, examples, weighting_inputs, wcfg.inference_batch_size)})
            print(json.dumps({"seed": seed, **trace[-1]}), flush=True)

    cue = answer_cue_ids(tok, seq2seq, cfg.data.target_template)
    t0 = time.perf_counter()
    fit = fit_weighting_module(weighting_inputs, model.get_input_embeddings(), model,
                               wcfg, answer_cue_ids=cue, progress=False, on_step=on_step)
    keep = fit.stats["keep_ratio"]
    start = 0
    for point in trace:  # the sampled keep ratio of the steps since the previous snapshot
        point["keep_ratio"] = round(sum(keep[start:point["step"]]) / (point["step"] - start), 3)
        start = point["step"]
    return {"seed": seed, "wall_s": round(time.perf_counter() - t0, 1), "train_s": round(fit.stats["train_seconds"], 1),
            "steps": fit.stats["steps"], "trace": trace}


def plot(runs: list[dict], path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 3.2), sharey=True, squeeze=False)
    for ax, run in zip(axes[0], runs):
        steps = [p["step"] for p in run["trace"]]
        for c in SHOWN_CLASSES:
            ax.plot(steps, [p["classes"][c] for p in run["trace"]], marker="o", label=c)
        ax.set_title(f"weighting seed {run['seed']}")
        ax.set_xlabel("step")
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("mean weight")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config", nargs="?", default=str(ROOT / "configs" / "default.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=120, help="kpod.weighting.max_steps of every run")
    ap.add_argument("--every", type=int, default=15, help="steps between snapshots of the weights")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    ap.add_argument("--out", default=str(ROOT / "results" / "weighting_trajectory"))
    a = ap.parse_args()
    if a.steps < 1 or a.every < 1:
        ap.error("--steps and --every must be at least 1")

    cfg = load_config(a.config, {**parse_overrides(a.set), "kpod.weighting.max_steps": a.steps})
    work = Path(tempfile.mkdtemp(prefix="kpod-weighting-trajectory-"))
    cfg.run_dir = str(work)  # the data stages write there; nothing of it is kept
    pipe = Pipeline(cfg, progress=False)
    questions, rationales = pipe.stage_data()
    model, tok = load_student(cfg.student.name)
    examples = pipe.stage_encode(tok, questions, rationales)
    runs = [run_seed(cfg, seed, tok, model, examples, questions, a.every) for seed in a.seeds]
    shutil.rmtree(work, ignore_errors=True)

    result = {"benchmark": f"token weights during {a.steps} weighting steps on the {cfg.data.dataset} training rationales",
              "machine": machine(), "commit": git_commit(), "config": cfg.model_dump(mode="json", exclude={"run_dir"}),
              "examples": len(examples), "every": a.every, "runs": runs, "load_average_at_end": os.getloadavg()}
    out = Path(a.out)
    Path(a.out + ".json").write_text(json.dumps(result, indent=1))
    plot(runs, Path(a.out + ".png"))

    w = cfg.kpod.weighting
    md = [f"# Token weights during a {a.steps}-step weighting run on {cfg.data.dataset}, per weighting seed", "",
          f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, "
          f"{result['machine']['torch_threads']} torch threads, torch {result['machine']['torch']}; commit "
          f"{result['commit']}; {len(examples)} training rationales; settings: "
          f"`{json.dumps(w.model_dump(include={'predictor_mode', 'lr', 'batch_size', 'max_steps', 'alpha', 'temperature_start', 'temperature_end', 'center_logits', 'answer_prefixes', 'mask_representation', 'gradient_estimator'}))}`; "
          f"closing answer statements cut from the rationales: {cfg.data.strip_answer_statement}.",
          "", "Mean weight per token class of every training rationale, under the module after each step shown; "
          "keep ratio: mean sampled keep ratio of the steps since the previous row.", "",
          "| seed | step | " + " | ".join(SHOWN_CLASSES) + " | mean weight | weight std | keep ratio |",
          "|---|---|" + "---|" * (len(SHOWN_CLASSES) + 3)]
    for run in runs:
        for p in run["trace"]:
            cells = ["-" if p["classes"][c] is None else f"{p['classes'][c]:.3f}" for c in SHOWN_CLASSES]
            md.append(f"| {run['seed']} | {p['step']} | " + " | ".join(cells)
                      + f" | {p['mean_weight']} | {p['weight_std']} | {p['keep_ratio']} |")
    md += ["", "Training seconds per seed: " + ", ".join(f"seed {r['seed']} {r['train_s']} s" for r in runs)
           + f" (snapshots included). Figure: `{out.name}.png`.", "",
           "Reproduce: `python bench/weighting_trajectory.py %s --seeds %s --steps %d --every %d%s`" % (
               os.path.relpath(a.config, ROOT), " ".join(map(str, a.seeds)), a.steps, a.every,
               "".join(f" --set {s}" for s in a.set))]
    Path(a.out + ".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
