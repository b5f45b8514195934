"""Evaluation generation speed, side by side on the same model and questions:
- kpod batched: sequences leave the batch as soon as their answer sentence is complete;
- kpod one at a time (batch 1): the same decoding, no batching;
- comparator: `model.generate` on left-padded, length-sorted batches (what the anchor benchmark did), where
  finished sequences keep occupying the batch until the longest one ends.
Reports useful tokens (generated up to and including the stop), computed tokens (batch rows x decode steps) and
useful tokens/s.

    python bench/generation_speed.py --adapter runs/svamp-plain/train/final --n 64
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

from kpod.data.datasets import load_split  # noqa: E402
from kpod.data.prompts import render_prompt  # noqa: E402
from kpod.evaluation.evaluate import git_commit, machine  # noqa: E402
from kpod.evaluation.generate import generate, stop_token_ids  # noqa: E402
from kpod.models import load_student  # noqa: E402


@torch.no_grad()
def hf_generate(model, tok, prompts, batch_size, max_new_tokens) -> dict:
    tok.padding_side = "left"
    stops = sorted(stop_token_ids(tok))
    order = sorted(range(len(prompts)), key=lambda i: len(tok(prompts[i]).input_ids))
    useful = computed = 0
    t0 = time.perf_counter()
    for b in range(0, len(order), batch_size):
        enc = tok([prompts[i] for i in order[b: b + batch_size]], return_tensors="pt", padding=True)
        out = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=stops,
                             pad_token_id=tok.pad_token_id)
        new = out[:, enc["input_ids"].shape[1]:]
        computed += new.numel()
        for row in new.tolist():
            useful += next((j + 1 for j, t in enumerate(row) if t in stops), len(row))
    wall = time.perf_counter() - t0
    return {"useful_tokens": useful, "computed_tokens": computed, "wall_s": round(wall, 2),
            "useful_tokens_per_s": round(useful / wall, 1), "useful_over_computed": round(useful / computed, 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--adapter", help="LoRA adapter of a distilled student (its answers stop; the base model's rarely do)")
    ap.add_argument("--n", type=int, default=64, help="SVAMP test questions")
    ap.add_argument("--n-single", type=int, default=16, help="questions for the one-at-a-time run")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=200)
    ap.add_argument("--out", default=str(ROOT / "results" / "generation_speed"))
    a = ap.parse_args()

    model, tok = load_student(a.model)
    if a.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, a.adapter).merge_and_unload()
    model.eval()
    prompts = [render_prompt(q) for q in load_split("svamp", "test")[: a.n]]
    rows = {}
    _, rows["kpod_batched"] = generate(model, tok, prompts, batch_size=a.batch_size, max_new_tokens=a.max_new_tokens,
                                       progress=False)
    _, rows["kpod_one_at_a_time"] = generate(model, tok, prompts[: a.n_single], batch_size=1,
                                             max_new_tokens=a.max_new_tokens, progress=False)
    rows["comparator_hf_generate_batched"] = hf_generate(model, tok, prompts, a.batch_size, a.max_new_tokens)
    result = {"benchmark": "evaluation generation speed", "model": a.model, "adapter": a.adapter, "n": a.n,
              "n_single": a.n_single, "batch_size": a.batch_size, "max_new_tokens": a.max_new_tokens,
              "machine": machine(), "commit": git_commit(), "load_average_at_end": os.getloadavg(), "runs": rows}
    base = rows["kpod_one_at_a_time"]["useful_tokens_per_s"]
    result["speedup_batched_vs_one_at_a_time"] = round(rows["kpod_batched"]["useful_tokens_per_s"] / base, 2)
    result["speedup_vs_comparator"] = round(
        rows["kpod_batched"]["useful_tokens_per_s"] / rows["comparator_hf_generate_batched"]["useful_tokens_per_s"], 2)
    Path(a.out + ".json").write_text(json.dumps(result, indent=1))
    md = ["# Generation speed (greedy, SVAMP test prompts)", "",
          f"Model {a.model}{' + adapter ' + a.adapter if a.adapter else ''}; machine {result['machine']['cpu']}, "
          f"{result['machine']['cores']} cores; commit {result['commit']}; load average at end "
          f"{tuple(round(x, 2) for x in result['load_average_at_end'])}.", "",
          "| run | questions | useful tokens | computed tokens | useful/computed | wall (s) | useful tokens/s |",
          "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        n = a.n_single if name == "kpod_one_at_a_time" else a.n
        md.append(f"| {name} | {n} | {r['useful_tokens']} | {r['computed_tokens']} | {r['useful_over_computed']} | "
                  f"{r['wall_s']} | {r['useful_tokens_per_s']} |")
    md += ["", f"Batched vs one at a time: {result['speedup_batched_vs_one_at_a_time']}x; "
           f"vs the comparator: {result['speedup_vs_comparator']}x.", "",
           f"Reproduce: `python bench/generation_speed.py{' --adapter ' + a.adapter if a.adapter else ''} --n {a.n}`"]
    Path(a.out + ".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
