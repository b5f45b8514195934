"""Training throughput of kpod's distillation trainer against a straightforward training loop, side by side.

Both train the default student with the same LoRA config (r 16, alpha 32, dropout 0.05 on q,k,v,o,gate,up,down),
batch 8, AdamW lr 2e-4, on the same SVAMP GPT-3.5 examples (first rationale per question):
- comparator: the plain loop of the SVAMP anchor benchmark — shuffled batches sorted by length inside
  mega-batches of 64, `model(input_ids, attention_mask, labels)` (logits at every position), backward, clip, step;
- kpod: `DistillTrainer` on the Hugging Face Trainer, logits only at supervised positions, length-grouped batches;
  kpod_compile: the same with `train.torch_compile` (compile time included); kpod_packing: random batches packed
  into rows of up to 1024 tokens (`train.packing`); kpod_torch_dropout: `nn.Dropout` masks in the LoRA branches
  instead of kpod's cheaper CPU masks (`train.fast_lora_dropout: false`).
Blocks of steps alternate between the paths so that machine noise hits all alike. Also checks that both give the
same loss on the same batch and weights.

    python bench/train_throughput.py --steps 12 --blocks 2 --variants kpod kpod_compile kpod_packing
    # writes results/train_throughput.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from kpod.config import TrainConfig  # noqa: E402
from kpod.data.datasets import load_split  # noqa: E402
from kpod.data.rationales import import_rationales  # noqa: E402
from kpod.distill.dataset import DistillDataset, PadCollator  # noqa: E402
from kpod.distill.examples import encode_examples  # noqa: E402
from kpod.distill.loss import causal_lm_loss  # noqa: E402
from kpod.distill.trainer import build_trainer, peak_rss_mb  # noqa: E402
from kpod.evaluation.evaluate import git_commit, machine  # noqa: E402
from kpod.models import add_lora, load_student  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def fresh_model(seed: int):
    torch.manual_seed(seed)
    model, _ = load_student("smollm2-135m-instruct")
    return add_lora(model, 16, 32, 0.05, TARGETS)


def comparator_batches(lengths, batch_size, seed):
    rng = random.Random(seed)
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    out = []
    for s in range(0, len(idx), batch_size * 8):
        chunk = sorted(idx[s: s + batch_size * 8], key=lambda i: -lengths[i])
        out += [chunk[j: j + batch_size] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(out)
    return out


def run_comparator(ds, collate, steps, seed) -> dict:
    model = fresh_model(seed)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4, weight_decay=0.0)
    batches = comparator_batches(ds.lengths, 8, seed)[:steps]
    tokens, t0 = 0, time.perf_counter()
    for b in batches:
        batch = collate([ds[i] for i in b])
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += int(batch["attention_mask"].sum())
    wall = time.perf_counter() - t0
    return {"steps": len(batches), "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall}


VARIANTS = {  # kpod's trainer with its speed options (TrainConfig fields)
    "kpod": {},
    "kpod_compile": {"torch_compile": True},
    "kpod_packing": {"packing": True, "group_by_length": False},  # random batches, packed: no pad tokens
    "kpod_torch_dropout": {"fast_lora_dropout": False},  # nn.Dropout's mask, as the comparator draws it
}


def run_kpod(ds, tok, steps, seed, out_dir, options=None) -> dict:
    model = fresh_model(seed)
    torch._dynamo.reset()
    cfg = TrainConfig(epochs=1, batch_size=8, lr=2e-4, warmup_steps=0, save_steps=10_000, logging_steps=10_000,
                      **(options or {}))
    trainer = build_trainer(model, tok, ds, cfg, out_dir, seed)
    trainer.args.max_steps = steps
    trainer.args.save_strategy = "no"
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    return {"steps": trainer.state.global_step, "tokens": trainer.tokens_seen, "wall_s": wall,
            "tokens_per_s": trainer.tokens_seen / wall}


def same_loss_check(ds, collate, seed) -> dict:
    model = fresh_model(seed)
    batch = collate([ds[i] for i in range(8)])
    with torch.no_grad():
        hf = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        ours = causal_lm_loss(model, batch, "tokens")
    return {"hf_loss": float(hf), "kpod_loss": float(ours), "abs_diff": abs(float(hf) - float(ours))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12, help="optimizer steps per block")
    ap.add_argument("--blocks", type=int, default=2, help="alternating blocks per path")
    ap.add_argument("--variants", nargs="+", default=["kpod"], choices=sorted(VARIANTS),
                    help="kpod trainer variants to time beside the comparator")
    ap.add_argument("--out", default=str(ROOT / "results" / "train_throughput"))
    a = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    _, tok = load_student("smollm2-135m-instruct")
    questions = {q.id: q for q in load_split("svamp", "train")}
    rationales = [r for r in import_rationales("svamp", "gpt35")[0] if r.sample == 0]
    examples, report = encode_examples(tok, questions, rationales, max_length=384, progress=False)
    ds, collate = DistillDataset(examples), PadCollator(tok.pad_token_id)

    check = same_loss_check(ds, collate, 0)
    runs = {"comparator": [], **{v: [] for v in a.variants}}
    for block in range(a.blocks):
        runs["comparator"].append(run_comparator(ds, collate, a.steps, seed=block))
        for v in a.variants:
            runs[v].append(run_kpod(ds, tok, a.steps, block, Path(tempfile.gettempdir()) / "kpod-bench-train", VARIANTS[v]))
        print(json.dumps({k: v[-1] for k, v in runs.items()}), flush=True)

    def total(name):
        toks = sum(r["tokens"] for r in runs[name])
        wall = sum(r["wall_s"] for r in runs[name])
        return {"tokens": toks, "wall_s": round(wall, 1), "tokens_per_s": round(toks / wall, 1),
                "s_per_step": round(wall / sum(r["steps"] for r in runs[name]), 2)}

    result = {
        "benchmark": "training throughput, default student, LoRA r16, batch 8, SVAMP GPT-3.5 examples",
        "machine": machine(), "commit": git_commit(), "load_average_at_end": os.getloadavg(),
        "peak_rss_mb": peak_rss_mb(),
        "data": report, "steps_per_block": a.steps, "blocks": a.blocks, "seeds": list(range(a.blocks)),
        "same_loss_check": check, "variants": {v: VARIANTS[v] for v in a.variants}, "runs": runs,
        **{name: total(name) for name in runs},
    }
    result["speedup"] = {v: round(result[v]["tokens_per_s"] / result["comparator"]["tokens_per_s"], 2)
                         for v in a.variants}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out + ".json").write_text(json.dumps(result, indent=1))
    md = [
        "# Training throughput: kpod vs a straightforward loop (same model, LoRA, data, batch)",
        "", f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, torch {result['machine']['torch']}; "
        f"commit {result['commit']}; load average at end {tuple(round(x, 2) for x in result['load_average_at_end'])}.",
        "", "| path | steps | tokens | wall (s) | s/step | tokens/s |", "|---|---|---|---|---|---|",
    ]
    for name in runs:
        t = result[name]
        md.append(f"| {name} | {a.steps * a.blocks} | {t['tokens']} | {t['wall_s']} | {t['s_per_step']} | {t['tokens_per_s']} |")
    speedups = ", ".join(f"{v} **{x}x**" for v, x in result["speedup"].items())
    md += ["", f"Speed-up over the comparator in tokens/s: {speedups}. Same batch, same weights: HF loss {check['hf_loss']:.6f}, "
           f"kpod loss {check['kpod_loss']:.6f} (|diff| {check['abs_diff']:.2e}). Peak RSS {result['peak_rss_mb']} MB.",
           "", "Reproduce: `python bench/train_throughput.py --steps %d --blocks %d --variants %s`" % (
               a.steps, a.blocks, " ".join(a.variants))]
    Path(a.out + ".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
