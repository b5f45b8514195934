"""MCC-KD batches pairs of rationales of one question: in random order (`baselines.mcc_kd.group_pairs_by_length:
false`, how kpod trained MCC-KD first) or length-grouped (the default). This measures what grouping saves.

1. Padding: over whole epochs of the SVAMP GPT-3.5 training rationales (every rationale of each question, as MCC-KD
   trains), the share of each batch of 8 that is padding, for both orders. Cheap: no model runs.
2. Speed (with --steps N > 0): MccKdTrainer on the default student (LoRA r16 as configs/default.yaml, batch 8),
   N optimizer steps per block, blocks alternating between the two orders so that machine noise hits both alike.

    python bench/mcc_kd_pairing.py --steps 10 --blocks 2    # writes results/mcc_kd_pairing.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

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


def time_block(ds, tok, grouped: bool, steps: int, seed: int, out_dir: Path) -> dict:
    torch.manual_seed(seed)
    model, _ = load_student("smollm2-135m-instruct")
    model = add_lora(model, 16, 32, 0.05, TARGETS)
    cfg = TrainConfig(epochs=1, batch_size=BATCH, lr=2e-4, warmup_steps=0, save_steps=10_000, logging_steps=10_000)
    trainer = build_trainer(model, tok, ds, cfg, out_dir, seed, trainer_cls=MccKdTrainer, consistency_weight=0.1,
                            group_pairs_by_length=grouped)
    trainer.args.max_steps = steps
    trainer.args.save_strategy = "no"
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    return {"steps": trainer.state.global_step, "tokens": trainer.tokens_seen, "wall_s": round(wall, 1),
            "tokens_per_s": round(trainer.tokens_seen / wall, 1), "s_per_step": round(wall / steps, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=0, help="optimizer steps per timed block (0: padding only)")
    ap.add_argument("--blocks", type=int, default=2, help="alternating timed blocks per order")
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

    timed = {name: [] for name in ORDERS}
    for block in range(a.blocks if a.steps else 0):
        for name, grouped in ORDERS.items():
            timed[name].append(time_block(ds, tok, grouped, a.steps, block, Path("/tmp") / "kpod-bench-mcc"))
            print(name, json.dumps(timed[name][-1]), flush=True)

    def total(runs):
        if not runs:
            return None
        toks, wall = sum(r["tokens"] for r in runs), sum(r["wall_s"] for r in runs)
        return {"tokens": toks, "wall_s": round(wall, 1), "tokens_per_s": round(toks / wall, 1),
                "s_per_step": round(wall / sum(r["steps"] for r in runs), 2)}

    totals = {name: total(runs) for name, runs in timed.items()}
    result = {
        "benchmark": "MCC-KD pair order: random vs length-grouped, default student, batch 8, SVAMP GPT-3.5 rationales",
        "machine": machine(), "commit": git_commit(), "load_average_at_end": os.getloadavg(),
        "data": report, "epochs_counted": a.epochs, "padding": padding,
        "steps_per_block": a.steps, "blocks": a.blocks if a.steps else 0, "seeds": list(range(a.blocks)) if a.steps else [],
        "runs": timed, "totals": totals,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out + ".json").write_text(json.dumps(result, indent=1))
    m = result["machine"]
    md = ["# MCC-KD: random pairs vs length-grouped pairs", "",
          f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}; commit {result['commit']}; "
          f"{report['examples']} training rationales of {len(set(qids))} SVAMP questions, batch {BATCH}.", "",
          "| pair order | padding share of batches | tokens/s | s/step |", "|---|---|---|---|"]
    for name in ORDERS:
        t = totals[name]
        speed = (t["tokens_per_s"], t["s_per_step"]) if t else ("-", "-")
        md.append(f"| {name} | {100 * padding[name]['padding_share']:.1f} % | {speed[0]} | {speed[1]} |")
    md += ["", f"Padding counted over {a.epochs} epochs (seed 0); speed over {result['blocks']} alternating blocks of "
           f"{a.steps} steps per order (tokens/s counts real tokens only).", "",
           f"Reproduce: `python bench/mcc_kd_pairing.py --steps {a.steps} --blocks {a.blocks}`"]
    Path(a.out + ".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
