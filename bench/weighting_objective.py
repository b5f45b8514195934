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
rationale, per prefix fraction.

    python bench/weighting_objective.py --out results/weighting_objective_svamp
    KPOD_DATA_DIR=path/to/data python bench/weighting_objective.py --set data.dataset=gsm8k \
        --out results/weighting_objective_gsm8k
    python bench/weighting_objective.py --render results/weighting_objective_gsm8k.json   # rewrite the .md only
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

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from kpod.cli import parse_overrides  # noqa: E402
from kpod.config import load_config  # noqa: E402
from kpod.curriculum.stages import ANSWER_CUE, weighting_examples  # noqa: E402
from kpod.evaluation.evaluate import git_commit, machine  # noqa: E402
from kpod.models import load_student  # noqa: E402
from kpod.pipeline import Pipeline  # noqa: E402
from kpod.weighting.artefact import token_strings  # noqa: E402
from kpod.weighting.batching import answer_nll, build_predictor_batch, pad_examples  # noqa: E402
from kpod.weighting.summary import classify_token  # noqa: E402
from kpod.weighting.train import answer_logits_fn, mean_input_embedding  # noqa: E402

MASKS = ("keep_all", "mask_all", "keypoints", "random")
KEYPOINT_CLASSES = ("digit", "operator")


def keep_vectors(tok, inputs, max_tokens: int, seed: int) -> dict[str, list[np.ndarray]]:
    """Per mask name, one 0/1 keep vector per rationale (truncated as the training truncates)."""
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
    forward = answer_logits_fn(model)
    rows = []
    for start in range(0, len(inputs), batch_size):
        index = torch.arange(start, min(start + batch_size, len(inputs)))
        batch = data.select(index)
        keep = torch.zeros(batch.rationale.shape, dtype=torch.float32)
        for row, i in enumerate(index.tolist()):
            keep[row, : len(keeps[i])] = torch.from_numpy(keeps[i])
        prefixes = torch.round(batch.rationale_lengths[:, None].float() * torch.from_numpy(fractions)[None].float()).long()
        built = build_predictor_batch(batch, keep, prefixes, embedding, cue, wcfg.mask_representation, mask_vector)
        rows.append(answer_nll(forward(built), built.labels).view(len(index), -1).numpy())
    return np.concatenate(rows)


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
    lines = [f"# The weighting loss at fixed masks, {cfg['data']['dataset']} training rationales", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads, torch {m['torch']}; commit "
             f"{result['commit']}; predictor: {cfg['student']['name']}, frozen; the first {result['examples']} training "
             f"rationales (mean {result['rationale_tokens_mean']} tokens, {result['keypoint_share']:.1%} of them digits "
             f"or operators); closing answer statements cut: {cfg['data']['strip_answer_statement']}; masked tokens: "
             f"{representation}; answer NLL averaged over {len(result['fractions'])} prefix fractions 0..1; alpha "
             f"{alpha}; {result['seconds']:.0f} s.", "",
             "| mask | L_p (answer NLL) | L_m (share kept) | L = L_p + alpha L_m | whole rationale: L_p | L |",
             "|---|---|---|---|---|---|"]
    for name in MASKS:
        p = masks[name]
        whole = p["answer_loss_by_fraction"][-1]
        lines.append(f"| {name} | {p['answer_loss']} | {p['mask_loss']} | {p['loss']} | {whole} | "
                     f"{whole + alpha * p['mask_loss']:.4f} |")
    best = min(MASKS, key=lambda n: masks[n]["loss"])
    best_whole = min(MASKS, key=lambda n: masks[n]["answer_loss_by_fraction"][-1] + alpha * masks[n]["mask_loss"])
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
              "| fraction | " + " | ".join(MASKS) + " |", "|---|" + "---|" * len(MASKS)]
    for j, f in enumerate(result["fractions"]):
        lines.append(f"| {f:.3f} | " + " | ".join(str(masks[n]["answer_loss_by_fraction"][j]) for n in MASKS) + " |")
    lines += ["", f"Reproduce: `{result['reproduce']}`"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config", nargs="?", default=str(ROOT / "configs" / "default.yaml"))
    ap.add_argument("--examples", type=int, default=96, help="training rationales scored (the first N)")
    ap.add_argument("--fractions", type=int, default=9, help="prefix fractions, evenly spaced over [0, 1]")
    ap.add_argument("--batch-size", type=int, default=4, help="rationales per forward pass (times the fractions rows)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random control mask")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    ap.add_argument("--out", default=str(ROOT / "results" / "weighting_objective"))
    ap.add_argument("--render", metavar="JSON", help="only rewrite the markdown report of a saved result")
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
    work = Path(tempfile.mkdtemp(prefix="kpod-weighting-objective-"))
    cfg.run_dir = str(work)  # the data stages write there; nothing of it is kept
    pipe = Pipeline(cfg, progress=False)
    questions, rationales = pipe.stage_data()
    model, tok = load_student(cfg.student.name)
    model.eval()
    examples = pipe.stage_encode(tok, questions, rationales)
    shutil.rmtree(work, ignore_errors=True)
    inputs = [e for e in weighting_examples(tok, examples, questions) if e.rationale_ids and e.answer_ids][: a.examples]

    cue = torch.tensor(tok(ANSWER_CUE, add_special_tokens=False).input_ids, dtype=torch.long)
    mask_vector = mean_input_embedding(model.get_input_embeddings())
    fractions = np.linspace(0.0, 1.0, a.fractions)
    keeps = keep_vectors(tok, inputs, wcfg.max_rationale_tokens, a.seed)
    t0 = time.perf_counter()
    nll = {m: prefix_nll(model, inputs, keeps[m], fractions, wcfg, cue, mask_vector, a.batch_size) for m in MASKS}
    seconds = time.perf_counter() - t0

    alpha = wcfg.alpha
    per_mask = {}
    for m in MASKS:
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

    result = {
        "benchmark": f"the weighting loss at fixed masks on the {cfg.data.dataset} training rationales",
        "machine": machine(), "commit": git_commit(), "config": cfg.model_dump(mode="json", exclude={"run_dir"}),
        "examples": len(inputs), "rationale_tokens_mean": round(float(np.mean(lengths)), 1),
        "keypoint_share": round(float(share.mean()), 4), "fractions": [round(float(f), 4) for f in fractions],
        "alpha": alpha, "masks": per_mask, "alpha_break_even": round(float(gain.mean() / share.mean()), 4),
        "keypoints_beat_mask_all_share": round(keypoints_win, 4), "seconds": round(seconds, 1),
        "reproduce": "python bench/weighting_objective.py %s --examples %d --fractions %d --seed %d%s" % (
            os.path.relpath(a.config, ROOT), a.examples, a.fractions, a.seed, "".join(f" --set {s}" for s in a.set)),
    }
    result["windows"] = windows(result)
    Path(a.out + ".json").write_text(json.dumps(result, indent=1))
    Path(a.out + ".md").write_text(render(result))
    print(render(result))


if __name__ == "__main__":
    main()
