"""Per-step wall times of kpod's distillation trainer on the default student, eager or with a speed option, to see
what an option costs up front (torch.compile's compile time) and what it gains per step afterwards.

    python bench/step_times.py eager 8        # prints one JSON line: mode, wall, tokens, tokens/s, seconds per step
    python bench/step_times.py compile 8      # train.torch_compile
    python bench/step_times.py pack 8         # train.packing (length-grouped batches, packed rows)
    python bench/step_times.py pack_random 8  # train.packing with random batches
Same data (SVAMP GPT-3.5, first rationale per question), LoRA r16 on every projection, batch 8, seed 0.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from transformers import TrainerCallback  # noqa: E402

from kpod.config import TrainConfig  # noqa: E402
from kpod.data.datasets import load_split  # noqa: E402
from kpod.data.rationales import import_rationales  # noqa: E402
from kpod.distill.dataset import DistillDataset  # noqa: E402
from kpod.distill.examples import encode_examples  # noqa: E402
from kpod.distill.trainer import build_trainer  # noqa: E402
from kpod.models import add_lora, load_student  # noqa: E402

MODES = ("eager", "compile", "pack", "pack_random")


class StepTimes(TrainerCallback):
    def __init__(self):
        self.times: list[float] = []
        self._last = time.perf_counter()

    def on_step_end(self, *args, **kwargs):
        now = time.perf_counter()
        self.times.append(round(now - self._last, 2))
        self._last = now


def main() -> None:
    mode, steps = sys.argv[1], int(sys.argv[2])
    if mode not in MODES:
        raise SystemExit(f"mode must be one of {MODES}")
    model, tok = load_student("smollm2-135m-instruct")
    model = add_lora(model, 16, 32, 0.05, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    questions = {q.id: q for q in load_split("svamp", "train")}
    rationales = [r for r in import_rationales("svamp", "gpt35")[0] if r.sample == 0]
    examples, _ = encode_examples(tok, questions, rationales, max_length=384, progress=False)
    cfg = TrainConfig(epochs=1, batch_size=8, warmup_steps=0, save_steps=10_000, logging_steps=10_000,
                      torch_compile=mode == "compile", packing=mode.startswith("pack"),
                      group_by_length=mode != "pack_random")
    trainer = build_trainer(model, tok, DistillDataset(examples), cfg, Path(tempfile.gettempdir()) / "kpod-step-times", 0)
    timer = StepTimes()
    trainer.add_callback(timer)
    trainer.args.max_steps, trainer.args.save_strategy = steps, "no"
    t0 = time.perf_counter()
    timer._last = t0
    trainer.train()
    wall = time.perf_counter() - t0
    print(json.dumps({"mode": mode, "steps": steps, "wall_s": round(wall, 1), "tokens": trainer.tokens_seen,
                      "tokens_per_s": round(trainer.tokens_seen / wall, 1), "step_s": timer.times}))


if __name__ == "__main__":
    main()
