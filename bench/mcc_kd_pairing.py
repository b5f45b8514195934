"""MCC-KD batches pairs of rationales of one question: in random order (`baselines.mcc_kd.group_pairs_by_length:
false`, how kpod trained MCC-KD first) or length-grouped (the default). This measures what grouping saves.

1. Padding: over whole epochs of the SVAMP GPT-3.5 training rationales (every rationale of each question, as MCC-KD
   trains), the share of each batch of 8 that is padding, for both orders. Cheap: no model runs.
2. Speed (with --batches N > 0): forward and backward of MccKdTrainer's loss on the default student (LoRA r16 as
   configs/default.yaml, batch 8) for N batches spread evenly over an epoch of each order, alternating between the
   orders batch by batch so that machine noise hits both alike; the epoch time is estimated from them.

    python bench/mcc_kd_pairing.py --batches 16    # writes results/mcc_kd_pairing.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from kpod.baselines.mcc_kd import MccKdTrainer, QuestionPairSampler  # noqa: E402
from kpod.config import TrainConfig  # noqa: E402
from kpod.data.datasets import load_split  # noqa: E402
from kpod.data.rationales import import_rationales  # noqa: E402
from kpod.distill.dataset import DistillDataset  # noqa: E402
from kpod.distill.examples import encode_examples  # noqa: E402
from kpod.distill.trainer import build_trainer  # noqa: E402
from kpod.evaluation.evaluate import git_commit, machine  # noqa: E402
from kpod.models import add_lora, load_student  # noqa: E402

BATCH = 8
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ORDERS = {"random_pairs": False, "length_grouped_pairs": True}


def padding_share(sampler: QuestionPairSampler, lengths: list[int], epochs: int) -> dict:
    real = padded = 0
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        order = list(sampler)
        for k in range(0, len(order), BATCH):
            batch = order[k:k + BATCH]
            real += sum(lengths[i] for i in batch)
            padded += len(batch) * max(lengths[i] for i in batch)
    return {"real_tokens": real, "padded_tokens": padded, "padding_share": round(1 - real / padded, 4)}


def timed_sample(ds, tok, batches_per_order: int, seed: int) -> dict:
    """Forward and backward of the MCC-KD loss on batches spread evenly over epoch 0 of each order (the first
    batches of a length-grouped epoch are its longest, so the first N steps would not be a fair sample), the two
    orders alternating batch by batch. The epoch estimate is the mean time per batch x batches per epoch."""
    trainers, orders = {}, {}
    for name, grouped in ORDERS.items():
        torch.manual_seed(seed)
        model, _ = load_student("smollm2-135m-instruct")
        model = add_lora(model, 16, 32, 0.05, TARGETS)
        cfg = TrainConfig(epochs=1, batch_size=BATCH, lr=2e-4, warmup_steps=0, save_steps=10_000, logging_steps=10_000)
        trainers[name] = build_trainer(model, tok, ds, cfg, Path(tempfile.gettempdir()) / f"kpod-bench-mcc-{name}", seed,
                                       trainer_cls=MccKdTrainer, consistency_weight=0.1, group_pairs_by_length=grouped)
        orders[name] = list(trainers[name].get_train_dataloader())
    n = len(orders["random_pairs"])
    picks = sorted({int(round(x)) for x in np.linspace(0, n - 1, batches_per_order)})
    times = {name: [] for name in ORDERS}
    tokens = {name: 0 for name in ORDERS}

    def step(name, batch):
        trainer = trainers[name]
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        trainer.model.zero_grad(set_to_none=True)

    for name in ORDERS:  # warm-up, untimed
        step(name, orders[name][0])
    for k in picks:
        for name in ORDERS:
            batch = orders[name][k]
            t0 = time.perf_counter()
            step(name, batch)
            times[name].append(time.perf_counter() - t0)
            tokens[name] += int(batch["attention_mask"].sum())
    out = {}
    for name in ORDERS:
        wall = sum(times[name])
        out[name] = {"batches_timed": len(picks), "batches_per_epoch": len(orders[name]), "tokens": tokens[name],
                     "wall_s": round(wall, 1), "tokens_per_s": round(tokens[name] / wall, 1),
                     "s_per_step": round(wall / len(picks), 2),
                     "epoch_estimate_s": round(wall / len(picks) * len(orders[name]))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, default=0, help="batches timed per order (0: padding only)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the LoRA init and the epoch orders")
    ap.add_argument("--epochs", type=int, default=2, help="epochs over which padding is counted")
    ap.add_argument("--out", default=str(ROOT / "results" / "mcc_kd_pairing"))
    a = ap.parse_args()

    _, tok = load_student("smollm2-135m-instruct")
    questions = {q.id: q for q in load_split("svamp", "train")}
    rationales = import_rationales("svamp", "gpt35")[0]  # every sample of each question, as MCC-KD trains
    examples, report = encode_examples(tok, questions, rationales, max_length=384, progress=False)
    ds = DistillDataset(examples)
    qids = [e.question_id for e in examples]

    padding = {name: padding_share(QuestionPairSampler(qids, seed=0, lengths=ds.lengths if grouped else None,
                                                       pairs_per_batch=BATCH // 2 if grouped else None),
                                   ds.lengths, a.epochs)
               for name, grouped in ORDERS.items()}
    print(json.dumps(padding), flush=True)

    totals = timed_sample(ds, tok, a.batches, a.seed) if a.batches else {name: None for name in ORDERS}
    print(json.dumps(totals), flush=True)
    result = {
        "benchmark": "MCC-KD pair order: random vs length-grouped, default student, batch 8, SVAMP GPT-3.5 rationales",
        "machine": machine(), "commit": git_commit(), "load_average_at_end": os.getloadavg(),
        "data": report, "epochs_counted": a.epochs, "padding": padding,
        "seed": a.seed, "timed": totals,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out + ".json").write_text(json.dumps(result, indent=1))
    m = result["machine"]
    md = ["# MCC-KD: random pairs vs length-grouped pairs", "",
          f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}; commit {result['commit']}; "
          f"{report['examples']} training rationales of {len(set(qids))} SVAMP questions, batch {BATCH}.", "",
          "| pair order | padding share of batches | tokens/s | s per batch | epoch estimate (s) |", "|---|---|---|---|---|"]
    for name in ORDERS:
        t = totals[name] or {}
        md.append(f"| {name} | {100 * padding[name]['padding_share']:.1f} % | {t.get('tokens_per_s', '-')} | "
                  f"{t.get('s_per_step', '-')} | {t.get('epoch_estimate_s', '-')} |")
    timed_note = (f"speed: forward and backward of the MCC-KD loss on {totals['random_pairs']['batches_timed']} "
                  f"batches spread evenly over epoch 0 of each order, alternating, seed {a.seed} (tokens/s counts real "
                  f"tokens; no optimizer step, which costs the same in both)") if a.batches else "speed not timed"
    md += ["", f"Padding counted over {a.epochs} epochs (seed 0); {timed_note}.", "",
           f"Reproduce: `python bench/mcc_kd_pairing.py --batches {a.batches} --seed {a.seed}`"]
    Path(a.out + ".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
