"""Which mask does the weighting objective itself prefer? The value of L = L_p + alpha * L_m (Eqs. 5-7) at a few fixed
hard masks of the real training rationales, with the frozen default student as answer predictor.

The weighting module can only learn the paper's pattern (keypoints kept, filler masked) if that mask scores better
under its loss than keeping nothing. This bench evaluates the loss, without training anything, at:

- keep all: every rationale token kept (L_m = 1 with the per-token normalisation);
- mask all: every token replaced by the mask vector (L_m = 0);
- keypoints: digits and operators kept, every other token masked (L_m = their share of the tokens);
- random: as many tokens as the keypoints, chosen at random (seeded), kept: the control.

L_p is the summed answer NLL averaged over prefix lengths k = round(f * L) at evenly spaced fractions f of each
rationale, 0 and 1 included (a fixed-grid estimate of the uniform mean over all prefixes that the training samples);
masked tokens reach the predictor as `kpod.weighting.mask_representation` says (default 'mask_embedding': replaced by
the mask vector at its starting value, the mean input embedding; 'drop': removed). It reports, per mask, L_p, L_m and L
at the configured alpha; the window of alpha in which the keypoint mask scores best of keep all, mask all and
keypoints, both for Eq. 5's prefixes and for the whole rationale alone (`kpod.weighting.answer_prefixes: whole`):
above (L_p(keypoints) - L_p(keep all)) / (1 - L_m(keypoints)) it beats keeping all, below
(L_p(mask all) - L_p(keypoints)) / L_m(keypoints) it beats masking all; and how the answer NLL falls along the
rationale, per prefix fraction. And, for the first few rationales, what masking each token alone does to the answer
from the whole rationale, per token class, against the price alpha / L the per-token mask loss puts on keeping it.

With --trained-predictor the weighting module is first trained with the config's `kpod.weighting` settings on every
training rationale (e.g. a LoRA-tuned predictor with a warm-up), and the masks are scored with the predictor and mask
vector that training leaves, with one more mask: the module's own (tokens with w > 0.5 kept).

    python bench/weighting_objective.py --out results/weighting_objective_svamp
    KPOD_DATA_DIR=path/to/data python bench/weighting_objective.py --set data.dataset=gsm8k \
        --out results/weighting_objective_gsm8k
    python bench/weighting_objective.py --render results/weighting_objective_gsm8k.json   # rewrite the .md only
    KPOD_DATA_DIR=path/to/data python bench/weighting_objective.py --set data.dataset=gsm8k \
        --set kpod.weighting.predictor_mode=lora --set kpod.weighting.predictor_warmup_steps=44 --trained-predictor \
        --out results/weighting_objective_gsm8k_lora_warmup
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from kpod.cli import parse_overrides  # noqa: E402
from kpod.config import RunConfig, load_config  # noqa: E402
from kpod.curriculum.stages import answer_cue_ids, weighting_examples  # noqa: E402
from kpod.evaluation.evaluate import git_commit, machine  # noqa: E402
from kpod.models import is_seq2seq, load_student  # noqa: E402
from kpod.pipeline import Pipeline  # noqa: E402
from kpod.weighting.artefact import token_strings  # noqa: E402
from kpod.weighting.batching import build_predictor_batch, pad_examples  # noqa: E402
from kpod.weighting.summary import classify_token  # noqa: E402
from kpod.weighting.train import (  # noqa: E402
    answer_nll_fn,
    decoder_start_id,
    fit_weighting_module,
    mean_input_embedding,
    predict_token_weights,
)

MASKS = ("keep_all", "mask_all", "keypoints", "random")
KEYPOINT_CLASSES = ("digit", "operator")


def keep_vectors(tok, inputs, max_tokens: int, seed: int) -> dict[str, list[np.ndarray]]:
    """Per mask name of MASKS, one 0/1 keep vector per rationale (truncated as the training truncates)."""
    rng = np.random.default_rng(seed)
    out = {m: [] for m in MASKS}
    for ex in inputs:
        ids = ex.rationale_ids[:max_tokens]
        keypoint = np.array([classify_token(s) in KEYPOINT_CLASSES for s in token_strings(tok, ids)], dtype=np.float32)
        random = np.zeros(len(ids), dtype=np.float32)
        random[rng.choice(len(ids), size=int(keypoint.sum()), replace=False)] = 1.0
        out["keep_all"].append(np.ones(len(ids), dtype=np.float32))
        out["mask_all"].append(np.zeros(len(ids), dtype=np.float32))
        out["keypoints"].append(keypoint)
        out["random"].append(random)
    return out


@torch.no_grad()
def prefix_nll(model, inputs, keeps: list[np.ndarray], fractions: np.ndarray, wcfg, cue, mask_vector,
               batch_size: int) -> np.ndarray:
    """Answer NLL [N, F] of every rationale under its keep vector, at each prefix fraction."""
    data = pad_examples(inputs, wcfg)
    embedding = model.get_input_embeddings()
    score_answers = answer_nll_fn(model)
    decoder_start = decoder_start_id(model)
    rows = []
    for start in range(0, len(inputs), batch_size):
        index = torch.arange(start, min(start + batch_size, len(inputs)))
        batch = data.select(index)
        keep = torch.zeros(batch.rationale.shape, dtype=torch.float32)
        for row, i in enumerate(index.tolist()):
            keep[row, : len(keeps[i])] = torch.from_numpy(keeps[i])
        prefixes = torch.round(batch.rationale_lengths[:, None].float() * torch.from_numpy(fractions)[None].float()).long()
        built = build_predictor_batch(batch, keep, prefixes, embedding, cue, wcfg.mask_representation, mask_vector,
                                      decoder_start)
        rows.append(score_answers(built).view(len(index), -1).numpy())
    return np.concatenate(rows)


MARGINAL_CLASSES = {"digit": ("digit",), "operator": ("operator",), "word": ("cue_word", "other_word"),
                    "other": ("punctuation", "whitespace", "other")}


def single_token_effects(model, tok, inputs, wcfg, cue, mask_vector, batch_size: int) -> dict:
    """What masking one token alone does to the answer from the whole rationale, token by token.

    The Gumbel-Softmax gradient of L_p with respect to one token's keep value is a local, one-token view of the same
    thing; under the per-token mask loss keeping that token costs alpha / L. Returns, per token class, the mean rise
    in answer NLL and the share of tokens whose rise exceeds that price, and, per rationale, the sum of the single-token
    rises against the rise from masking every token at once."""
    # Per rationale, one block of keep vectors: the whole rationale, each token masked alone, every token masked.
    blocks = []
    for ex in inputs:
        n = len(ex.rationale_ids[: wcfg.max_rationale_tokens])
        blocks.append([np.ones(n, dtype=np.float32), *(1.0 - np.eye(n, dtype=np.float32)), np.zeros(n, dtype=np.float32)])
    rows = [ex for ex, block in zip(inputs, blocks) for _ in block]
    keeps = [k for block in blocks for k in block]
    nll = prefix_nll(model, rows, keeps, np.array([1.0]), wcfg, cue, mask_vector, batch_size)[:, 0]
    per_class = {c: [] for c in MARGINAL_CLASSES}
    above_price = {c: [] for c in MARGINAL_CLASSES}
    summed, together = [], []
    start = 0
    for ex, block in zip(inputs, blocks):
        part = nll[start : start + len(block)]
        start += len(block)
        rises = part[1:-1] - part[0]
        price = wcfg.alpha / len(rises)
        for token, rise in zip(token_strings(tok, ex.rationale_ids[: len(rises)]), rises):
            group = next(g for g, members in MARGINAL_CLASSES.items() if classify_token(token) in members)
            per_class[group].append(float(rise))
            above_price[group].append(bool(rise > price))
        summed.append(float(rises.sum()))
        together.append(float(part[-1] - part[0]))
    return {
        "examples": len(inputs),
        "price_per_token": round(float(np.mean([wcfg.alpha / (len(b) - 2) for b in blocks])), 5),
        "classes": {c: {"tokens": len(v), "mean_rise": round(float(np.mean(v)), 5) if v else None,
                        "share_above_price": round(float(np.mean(above_price[c])), 4) if v else None}
                    for c, v in per_class.items()},
        "sum_of_single_rises": round(float(np.mean(summed)), 4),
        "rise_all_masked": round(float(np.mean(together)), 4),
    }


def keypoint_window(answer_loss: dict[str, float], share: float) -> dict[str, float]:
    """The alphas between which keeping the keypoints scores better than both keeping and masking every token."""
    return {"above": round((answer_loss["keypoints"] - answer_loss["keep_all"]) / (1.0 - share), 4),
            "below": round((answer_loss["mask_all"] - answer_loss["keypoints"]) / share, 4)}


def windows(result: dict) -> dict[str, dict[str, float]]:
    """keypoint_window for Eq. 5's prefixes ('every') and for the whole rationale alone ('whole')."""
    masks, share = result["masks"], result["keypoint_share"]
    return {"every": keypoint_window({m: masks[m]["answer_loss"] for m in MASKS}, share),
            "whole": keypoint_window({m: masks[m]["answer_loss_by_fraction"][-1] for m in MASKS}, share)}


def render(result: dict) -> str:
    """The markdown report of a result (as written to the JSON)."""
    m, cfg, masks, alpha = result["machine"], result["config"], result["masks"], result["alpha"]
    representation = cfg["kpod"]["weighting"]["mask_representation"]
    names = list(masks)  # MASKS, and 'learned' with a trained predictor
    trained = result.get("trained_predictor")
    predictor = "frozen" if not trained else (
        f"as the weighting training left it (predictor_mode {trained['predictor_mode']}, {trained['warmup_steps']} "
        f"warm-up and {trained['steps']} joint steps, keep ratio at the end {trained['final_keep_ratio']}; mask "
        f"'learned' = the trained module's tokens with w > 0.5)")
    lines = [f"# The weighting loss at fixed masks, {cfg['data']['dataset']} training rationales", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads, torch {m['torch']}; commit "
             f"{result['commit']}; predictor: {cfg['student']['name']}, {predictor}; the first {result['examples']} training "
             f"rationales (mean {result['rationale_tokens_mean']} tokens, {result['keypoint_share']:.1%} of them digits "
             f"or operators); closing answer statements cut: {cfg['data']['strip_answer_statement']}; masked tokens: "
             f"{representation}; answer NLL averaged over {len(result['fractions'])} prefix fractions 0..1; alpha "
             f"{alpha}; {result['seconds']:.0f} s.", "",
             "| mask | L_p (answer NLL) | L_m (share kept) | L = L_p + alpha L_m | whole rationale: L_p | L |",
             "|---|---|---|---|---|---|"]
    for name in names:
        p = masks[name]
        whole = p["answer_loss_by_fraction"][-1]
        lines.append(f"| {name} | {p['answer_loss']} | {p['mask_loss']} | {p['loss']} | {whole} | "
                     f"{whole + alpha * p['mask_loss']:.4f} |")
    best = min(names, key=lambda n: masks[n]["loss"])
    best_whole = min(names, key=lambda n: masks[n]["answer_loss_by_fraction"][-1] + alpha * masks[n]["mask_loss"])
    w = windows(result)

    def window(part: dict) -> str:
        if part["above"] < part["below"]:
            if part["above"] <= 0:  # it beats keeping all even without a mask loss
                return f"for every alpha below **{part['below']:.3f}**"
            return f"for alpha between **{part['above']:.3f} and {part['below']:.3f}**"
        return (f"for **no alpha** (it beats keeping all above {part['above']:.3f}, masking all below "
                f"{part['below']:.3f})")

    lines += ["", f"Lowest loss at alpha {alpha}: **{best}** over Eq. 5's prefixes, **{best_whole}** on the whole "
              f"rationale. Keeping only the keypoints scores best of keep all, mask all and keypoints {window(w['every'])} "
              f"over Eq. 5's prefixes, and {window(w['whole'])} on the whole rationale. Rationale by rationale, the "
              f"keypoints beat masking all over the prefixes at alpha {alpha} for "
              f"{result['keypoints_beat_mask_all_share']:.0%} of them.", "",
              "Answer NLL by prefix fraction (share of the rationale given):", "",
              "| fraction | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for j, f in enumerate(result["fractions"]):
        lines.append(f"| {f:.3f} | " + " | ".join(str(masks[n]["answer_loss_by_fraction"][j]) for n in names) + " |")
    effects = result.get("single_token")
    if effects:
        lines += ["", f"Masking one token alone, whole rationale, first {effects['examples']} rationales: the rise in "
                  f"answer NLL, against the mask loss's price of keeping one token (alpha / L, here "
                  f"{effects['price_per_token']} on average):", "",
                  "| tokens | count | mean rise in answer NLL | share rising more than alpha / L |", "|---|---|---|---|"]
        for name, c in effects["classes"].items():
            if c["tokens"]:
                lines.append(f"| {name} | {c['tokens']} | {c['mean_rise']} | {c['share_above_price']:.0%} |")
        lines += ["", f"Per rationale, the single-token rises add up to {effects['sum_of_single_rises']} nats; masking "
                  f"every token at once raises the answer NLL by {effects['rise_all_masked']}."]
    lines += ["", f"Reproduce: `{result['reproduce']}`"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config", nargs="?", default=str(ROOT / "configs" / "default.yaml"))
    ap.add_argument("--examples", type=int, default=64, help="training rationales scored (the first N)")
    ap.add_argument("--fractions", type=int, default=9, help="prefix fractions, evenly spaced over [0, 1]")
    ap.add_argument("--batch-size", type=int, default=4, help="rationales per forward pass (times the fractions rows)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random control mask")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    ap.add_argument("--out", default=str(ROOT / "results" / "weighting_objective"))
    ap.add_argument("--single-token-examples", type=int, default=16,
                    help="rationales whose tokens are masked one at a time (one predictor row per token)")
    ap.add_argument("--parts", nargs="+", choices=("masks", "single_token"), default=["masks", "single_token"],
                    help="what to measure; a part not measured is kept from an existing --out JSON")
    ap.add_argument("--render", metavar="JSON", help="only rewrite the markdown report of a saved result")
    ap.add_argument("--trained-predictor", action="store_true",
                    help="train the weighting module first (the config's kpod.weighting) and score with its predictor")
    a = ap.parse_args()
    if a.render:
        path = Path(a.render)
        result = json.loads(path.read_text())
        result["windows"] = windows(result)
        path.write_text(json.dumps(result, indent=1))
        path.with_suffix(".md").write_text(render(result))
        print(render(result))
        return
    if a.examples < 1 or a.fractions < 2:
        ap.error("--examples must be at least 1 and --fractions at least 2")

    cfg = load_config(a.config, parse_overrides(a.set))
    wcfg = cfg.kpod.weighting
    settings = cfg.fingerprint_fields()  # before run_dir points to a temporary folder
    previous = Path(a.out + ".json")
    if "masks" not in a.parts:  # checked before the model loads and (with --trained-predictor) trains
        if not previous.exists():
            ap.error(f"--parts without masks adds to an existing result, and {previous} does not exist")
        result = json.loads(previous.read_text())
        # Compared as fingerprints: options added since the result was written count at their old-behaviour values.
        if RunConfig.model_validate(result["config"]).fingerprint_fields() != settings:
            ap.error(f"{previous} was measured with another config: measure every part again")
        if bool(result.get("trained_predictor")) != a.trained_predictor:
            ap.error(f"{previous} was measured with{'out' if a.trained_predictor else ''} --trained-predictor")
    work = Path(tempfile.mkdtemp(prefix="kpod-weighting-objective-"))
    cfg.run_dir = str(work)  # the data stages write there; nothing of it is kept
    pipe = Pipeline(cfg, progress=False)
    questions, rationales = pipe.stage_data()
    model, tok = load_student(cfg.student.name)
    model.eval()
    examples = pipe.stage_encode(tok, questions, rationales)
    shutil.rmtree(work, ignore_errors=True)
    seq2seq = is_seq2seq(model)
    usable = [e for e in weighting_examples(tok, examples, questions, seq2seq, cfg.data.answer_choice_text,
                                                 cfg.data.target_template) if e.rationale_ids and e.answer_ids]
    inputs = usable[: a.examples]

    cue_ids = answer_cue_ids(tok, seq2seq, cfg.data.target_template)
    cue = torch.tensor(cue_ids, dtype=torch.long)
    mask_vector = mean_input_embedding(model.get_input_embeddings())
    trained, learned = None, None
    if a.trained_predictor:
        fit = fit_weighting_module(usable, model.get_input_embeddings(), model, wcfg, cue_ids, progress=False)
        model = fit.predictor.eval()
        if fit.mask_vector is not None:
            mask_vector = fit.mask_vector.detach()
        weights = predict_token_weights(fit.module, [e.rationale_ids[: wcfg.max_rationale_tokens] for e in inputs])
        learned = [(w > 0.5).astype(np.float32) for w in weights]
        trained = {"predictor_mode": wcfg.predictor_mode, "warmup_steps": fit.stats["warmup_steps"],
                   "steps": fit.stats["steps"], "final_keep_ratio": round(fit.stats["final_keep_ratio"], 4),
                   "train_seconds": round(fit.stats["train_seconds"], 1),
                   "mean_weight_evaluated": round(float(np.concatenate(weights).mean()), 4)}
    if "masks" in a.parts:
        result = measure_masks(model, tok, inputs, wcfg, cue, mask_vector, a.fractions, a.seed, a.batch_size, learned)
        if trained:
            result["trained_predictor"] = trained
        result.update({
            "benchmark": f"the weighting loss at fixed masks on the {cfg.data.dataset} training rationales",
            "machine": machine(), "commit": git_commit(), "config": cfg.model_dump(mode="json", exclude={"run_dir"}),
            "reproduce": "python bench/weighting_objective.py %s --examples %d --fractions %d --seed %d%s%s" % (
                os.path.relpath(a.config, ROOT), a.examples, a.fractions, a.seed, "".join(f" --set {s}" for s in a.set),
                " --trained-predictor" if a.trained_predictor else ""),
        })
    if "single_token" in a.parts and a.single_token_examples > 0:
        t0 = time.perf_counter()
        effects = single_token_effects(model, tok, inputs[: a.single_token_examples], wcfg, cue, mask_vector, a.batch_size)
        effects.update({"seconds": round(time.perf_counter() - t0, 1), "commit": git_commit()})
        result["single_token"] = effects
        command = re.sub(r" --single-token-examples \d+", "", result["reproduce"])
        result["reproduce"] = f"{command} --single-token-examples {a.single_token_examples}"
    result["windows"] = windows(result)
    Path(a.out + ".json").write_text(json.dumps(result, indent=1))
    Path(a.out + ".md").write_text(render(result))
    print(render(result))


def measure_masks(model, tok, inputs, wcfg, cue, mask_vector, num_fractions: int, seed: int, batch_size: int,
                  learned: list[np.ndarray] | None = None) -> dict:
    """The loss of Eqs. 5-7 at the fixed masks (and at a trained module's, if given), per prefix fraction and on
    average."""
    fractions = np.linspace(0.0, 1.0, num_fractions)
    keeps = keep_vectors(tok, inputs, wcfg.max_rationale_tokens, seed)
    if learned is not None:
        keeps["learned"] = learned
    t0 = time.perf_counter()
    nll = {m: prefix_nll(model, inputs, keeps[m], fractions, wcfg, cue, mask_vector, batch_size) for m in keeps}
    seconds = time.perf_counter() - t0

    alpha = wcfg.alpha
    per_mask = {}
    for m in keeps:
        lp = nll[m].mean(axis=1)  # [N]: the prefix mean of Eq. 5, per rationale
        lm = np.array([k.mean() for k in keeps[m]])  # per-token L_m (Eq. 6 normalised)
        per_mask[m] = {"answer_loss": round(float(lp.mean()), 4), "mask_loss": round(float(lm.mean()), 4),
                       "loss": round(float((lp + alpha * lm).mean()), 4),
                       "answer_loss_by_fraction": [round(float(v), 4) for v in nll[m].mean(axis=0)]}
    gain = nll["mask_all"].mean(axis=1) - nll["keypoints"].mean(axis=1)  # [N] answer-loss gain of the keypoints
    share = np.array([k.mean() for k in keeps["keypoints"]])
    # How often the keypoint mask beats masking all, rationale by rationale, at the configured alpha.
    keypoints_win = float(np.mean(gain > alpha * share))
    lengths = [len(k) for k in keeps["keep_all"]]

    return {
        "examples": len(inputs), "rationale_tokens_mean": round(float(np.mean(lengths)), 1),
        "keypoint_share": round(float(share.mean()), 4), "fractions": [round(float(f), 4) for f in fractions],
        "alpha": alpha, "masks": per_mask,
        "keypoints_beat_mask_all_share": round(keypoints_win, 4), "seconds": round(seconds, 1),
    }


if __name__ == "__main__":
    main()
