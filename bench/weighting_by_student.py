"""Does the token weighting module tell a student's rationale tokens apart? Per shipped student, on the first N SVAMP
training rationales (GPT-3.5, first sample of each question):

1. How much the frozen student uses the rationale: the summed answer NLL through the weighting predictor's input
   path (inputs_embeds from the student's embedding layer) with the whole rationale, with none, with every token
   replaced by the mask vector at its starting value, and with only the keypoints (digits and operators) replaced,
   against as many randomly chosen words replaced: whether the answer hangs on the tokens the module should keep.
2. What the module learns in the paper's setting (kpod.weighting defaults: 30 steps of 8 rationales, alpha 0.5): the
   keep ratio per step, and the spread of the final weights over the rationale tokens (a std of 0 means one weight
   for every token: the module learned a constant, not which tokens matter).

    python bench/weighting_by_student.py --students smollm2-135m-instruct gemma3-270m   # results/weighting_by_student.*
    python bench/weighting_by_student.py --students gemma3-270m --weighting lr=0.001 --out results/weighting_gemma_lr1e-3
    python bench/weighting_by_student.py --weighting gradient_estimator=score_function --weighting lr=0.003 \
        --out results/weighting_score_function          # add --weighting alpha=10: ..._alpha10
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from kpod.config import WeightingConfig  # noqa: E402
from kpod.curriculum.stages import answer_cue_ids, weighting_examples  # noqa: E402
from kpod.data.datasets import load_split  # noqa: E402
from kpod.data.rationales import import_rationales  # noqa: E402
from kpod.distill.examples import encode_examples  # noqa: E402
from kpod.evaluation.evaluate import git_commit, machine  # noqa: E402
from kpod.models import is_seq2seq, load_student  # noqa: E402
from kpod.weighting.batching import build_predictor_batch, pad_examples  # noqa: E402
from kpod.weighting.summary import classify_token  # noqa: E402
from kpod.weighting.train import (  # noqa: E402
    answer_nll_fn,
    decoder_start_id,
    fit_weighting_module,
    mean_input_embedding,
    predict_token_weights,
)


KEYPOINT_CLASSES = ("digit", "operator")


def token_classes(tok, ids) -> list[str]:
    return [classify_token(tok.convert_ids_to_tokens(int(t))) for t in ids]


def keypoints_and_as_many_words(tok, batch, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks [N, L] (True = this token): the digits and operators of each rationale, and as many of its words drawn
    at random (fewer where a rationale has fewer words)."""
    classes = [token_classes(tok, row) for row in batch.rationale]
    real = torch.arange(batch.rationale.shape[1])[None, :] < batch.rationale_lengths[:, None]
    keypoints = torch.tensor([[c in KEYPOINT_CLASSES for c in row] for row in classes]) & real
    words = torch.tensor([[c in ("other_word", "cue_word") for c in row] for row in classes]) & real
    drawn = torch.zeros_like(keypoints)
    rng = torch.Generator().manual_seed(seed)
    for r in range(len(drawn)):
        candidates = words[r].nonzero().flatten()
        chosen = candidates[torch.randperm(len(candidates), generator=rng)[: int(keypoints[r].sum())]]
        drawn[r, chosen] = True
    return keypoints, drawn


@torch.no_grad()
def rationale_use(model, tok, examples, cue: torch.Tensor, config: WeightingConfig, chunk: int = 4) -> dict:
    batch = pad_examples(examples, config)
    emb = model.get_input_embeddings()
    mask_vector = mean_input_embedding(emb)
    full = torch.ones_like(batch.rationale, dtype=torch.float32)
    keypoints, words = keypoints_and_as_many_words(tok, batch, config.seed)
    settings = {"whole rationale": (batch.rationale_lengths, full),
                "no rationale": (torch.zeros_like(batch.rationale_lengths), full),
                "every token masked": (batch.rationale_lengths, torch.zeros_like(full)),
                "digits and operators masked": (batch.rationale_lengths, (~keypoints).float()),
                "as many words masked": (batch.rationale_lengths, (~words).float())}
    score_answers = answer_nll_fn(model)  # the weighting stage's own forward and answer loss
    out = {}
    for name, (prefix, keep) in settings.items():
        inputs = build_predictor_batch(batch, keep, prefix[:, None], emb, cue, "mask_embedding", mask_vector,
                                       decoder_start_id(model))
        nll = []
        for i in range(0, len(inputs.labels), chunk):  # a few rows at a time: Gemma's 262k-token logits are large
            rows = slice(i, i + chunk)
            part = replace(inputs, inputs_embeds=inputs.inputs_embeds[rows], attention_mask=inputs.attention_mask[rows],
                           position_ids=inputs.position_ids[rows], labels=inputs.labels[rows],
                           decoder_input_ids=None if inputs.decoder_input_ids is None else inputs.decoder_input_ids[rows])
            nll.append(score_answers(part))
        out[name] = round(torch.cat(nll).mean().item(), 3)
    out["embedding scale"] = float(getattr(emb, "scalar_embed_scale", 1.0))
    out["mean |input embedding|"] = round(emb(batch.rationale[:1]).abs().mean().item(), 4)
    out["mean |mask vector start|"] = round(mask_vector.abs().mean().item(), 4)
    out["keypoint tokens"] = int(keypoints.sum())
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--students", nargs="+", default=["smollm2-135m-instruct", "gemma3-270m"])
    ap.add_argument("--rationales", type=int, default=96, help="first N training rationales (weighting)")
    ap.add_argument("--nll-rationales", type=int, default=24, help="first N of them for the answer NLL")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weighting", action="append", default=[], metavar="KEY=VALUE",
                    help="a kpod.weighting setting other than the default, e.g. lr=0.001 (repeatable)")
    ap.add_argument("--out", default=str(ROOT / "results" / "weighting_by_student"))
    a = ap.parse_args()
    changed = dict(kv.split("=", 1) for kv in a.weighting)

    questions = {q.id: q for q in load_split("svamp", "train")}
    rationales = [r for r in import_rationales("svamp", "gpt35")[0] if r.sample == 0][: a.rationales]
    config = WeightingConfig.model_validate({"max_steps": 30, "seed": a.seed, **changed})
    rows = []
    for name in a.students:
        torch.manual_seed(a.seed)
        model, tok = load_student(name)
        model.eval()
        encoded = encode_examples(tok, questions, rationales, progress=False)[0]
        seq2seq = is_seq2seq(model)
        examples = weighting_examples(tok, encoded, questions, seq2seq)
        cue_ids = answer_cue_ids(tok, seq2seq)
        use = rationale_use(model, tok, examples[: a.nll_rationales], torch.tensor(cue_ids), config)
        print(name, use, flush=True)
        # Trace the mean weight of keypoints and of the other tokens of the first 16 rationales after every step.
        probe = [e.rationale_ids for e in examples[:16]]
        probe_keypoint = np.array([c in KEYPOINT_CLASSES for ids in probe for c in token_classes(tok, ids)])
        trace = {"keypoints": [], "other tokens": []}

        def on_step(step, module):
            w = np.concatenate(predict_token_weights(module, probe))
            trace["keypoints"].append(round(float(w[probe_keypoint].mean()), 4))
            trace["other tokens"].append(round(float(w[~probe_keypoint].mean()), 4))

        t0 = time.time()
        fit = fit_weighting_module(examples, model.get_input_embeddings(), model, config, answer_cue_ids=cue_ids,
                                   progress=False, on_step=on_step)
        per_rationale = predict_token_weights(fit.module, [e.rationale_ids for e in examples])
        weights = np.concatenate(per_rationale)
        is_keypoint = np.array([c in KEYPOINT_CLASSES for e in examples for c in token_classes(tok, e.rationale_ids)])
        row = {"student": name, "answer_nll": use,
               "keep_ratio_per_step": [round(x, 3) for x in fit.stats["keep_ratio"]],
               "answer_loss_per_step": [round(x, 3) for x in fit.stats["answer_loss"]],
               "mean_weight_per_step_first_16": trace,
               "weights": {"tokens": int(weights.size), "mean": round(float(weights.mean()), 4),
                           "std": round(float(weights.std()), 4), "min": round(float(weights.min()), 4),
                           "max": round(float(weights.max()), 4), "share_above_0.5": round(float((weights > 0.5).mean()), 4),
                           "keypoint_mean": round(float(weights[is_keypoint].mean()), 4),
                           "other_mean": round(float(weights[~is_keypoint].mean()), 4)},
               "weighting_s": round(time.time() - t0, 1)}
        print(name, row["weights"], flush=True)
        rows.append(row)
        del model, fit

    out = {"benchmark": "weighting_by_student", "machine": machine(), "commit": git_commit(), "seed": a.seed,
           "rationales": a.rationales, "nll_rationales": a.nll_rationales, "weighting_config": config.model_dump(),
           "students": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out + ".json").write_text(json.dumps(out, indent=1))
    md = ["# Does the token weighting module tell a student's tokens apart?", "",
          f"SVAMP GPT-3.5 rationales (first {a.rationales}; answer NLL on the first {a.nll_rationales}), "
          f"kpod.weighting defaults (30 steps of 8, alpha 0.5)"
          + (f" except {', '.join(f'{k}={v}' for k, v in changed.items())}" if changed else "")
          + f", seed {a.seed}; commit {out['commit']}, "
          f"{out['machine']['cpu']} ({out['machine']['cores']} cores, {out['machine']['torch_threads']} torch threads). `bench/weighting_by_student.py`.", "",
          "| student | answer NLL: whole rationale | none | every token masked | digits and operators masked | "
          "as many words masked | keep ratio, steps 1 / 10 / last | final weights: mean | std | min | max | "
          "digits and operators | other tokens | weighting s, with the trace |", "|" + "---|" * 14]
    for r in rows:
        u, w, k = r["answer_nll"], r["weights"], r["keep_ratio_per_step"]
        md.append(f"| {r['student']} | {u['whole rationale']} | {u['no rationale']} | {u['every token masked']} | "
                  f"{u['digits and operators masked']} | {u['as many words masked']} | "
                  f"{k[0]} / {k[min(9, len(k) - 1)]} / {k[-1]} | {w['mean']} | {w['std']} | {w['min']} | {w['max']} | "
                  f"{w['keypoint_mean']} | {w['other_mean']} | {r['weighting_s']} |")
    md += ["", "Mean weight of keypoints (digits and operators) / of the other tokens of the first 16 rationales after "
           "steps 1, 3, 5, 10, 20 and the last:", ""]
    for r in rows:
        t = r["mean_weight_per_step_first_16"]
        at = sorted({i for i in (0, 2, 4, 9, 19, len(t["keypoints"]) - 1) if i < len(t["keypoints"])})
        md.append(f"- {r['student']}: " + ", ".join(f"{t['keypoints'][i]} / {t['other tokens'][i]}" for i in at))
    md += ["", "A std of 0 means one weight for every token: the module learned a constant, not which tokens matter. "
           "Masked = the token's input embedding replaced by the mask vector at its start (the mean input embedding); "
           "the answer NLL is summed over the answer tokens and averaged over the rationales."]
    Path(a.out + ".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
