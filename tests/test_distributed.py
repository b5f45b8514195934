"""Several processes, one run: the shipped accelerate configs pass accelerate's own loaders and checks; the shard
helpers and the seeded sampler split work without gaps or duplicates; and a 2-process KPOD run on the CPU (gloo,
`accelerate launch`) uses one schedule, gives each stage's examples to exactly one process, scores step difficulty
in shards and logs the losses of a 1-process run with the same global batch (grad accumulation)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin, patch_environment
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env
from torch.utils.data import BatchSampler

from kpod import distributed as dist
from kpod.distill.trainer import SeededLengthGroupedSampler

REPO = Path(__file__).resolve().parents[1]
ACCELERATE_CONFIGS = REPO / "configs" / "accelerate"
WORKER = Path(__file__).resolve().parent / "distributed_worker.py"

# config -> (distributed type, machines, processes, mixed precision)
EXPECTED = {
    "ddp-8gpu.yaml": (DistributedType.MULTI_GPU, 1, 8, "bf16"),
    "ddp-multinode.yaml": (DistributedType.MULTI_GPU, 2, 16, "bf16"),
    "fsdp-8gpu.yaml": (DistributedType.FSDP, 1, 8, "bf16"),
    "deepspeed-zero2.yaml": (DistributedType.DEEPSPEED, 1, 8, "bf16"),
    "deepspeed-zero3.yaml": (DistributedType.DEEPSPEED, 1, 8, "bf16"),
    "cpu-2proc.yaml": (DistributedType.MULTI_GPU, 1, 2, "no"),  # torchrun; the processes find no GPU and use gloo
}


# ----------------------------------------------------------------------------- the accelerate configs
def test_every_shipped_config_is_checked():
    assert {p.name for p in ACCELERATE_CONFIGS.glob("*.yaml")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_accelerate_config_passes_accelerates_loader_and_launcher(name, smol_tokenizer):
    path = ACCELERATE_CONFIGS / name
    cfg = load_config_from_file(str(path))  # unknown top-level keys raise here
    assert isinstance(cfg, ClusterConfig)
    kind, machines, processes, precision = EXPECTED[name]
    assert (cfg.distributed_type, cfg.num_machines, cfg.num_processes, cfg.mixed_precision) == (
        kind, machines, processes, precision)

    # Nested keys become `accelerate launch` options, which accelerate sets without checking: each must be one.
    parser = launch_command_parser()
    options = {action.dest for action in parser._actions}
    nested = [k if k.startswith("fsdp") else f"fsdp_{k}" for k in cfg.fsdp_config] + list(cfg.deepspeed_config)
    assert not [k for k in nested if k not in options], "unknown nested keys"

    args, defaults, _ = _validate_launch_command(parser.parse_args(["--config_file", str(path), "train.py"]))
    assert args.num_processes == processes and args.mixed_precision == precision
    args.main_process_port = 0  # a free port: the configured one may be taken on this machine; it is only checked
    if kind == DistributedType.DEEPSPEED:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        _, env = prepare_deepspeed_cmd_env(args)
        with patch_environment(**{k: v for k, v in env.items() if k.startswith("ACCELERATE_")}):
            plugin = DeepSpeedPlugin()  # what the Trainer builds in each process (DeepSpeed itself not needed)
        zero = plugin.deepspeed_config["zero_optimization"]
        assert zero["stage"] == cfg.deepspeed_config["zero_stage"] == int(name[-6])
        assert zero["stage3_gather_16bit_weights_on_model_save"] == (zero["stage"] == 3)  # train/final saved whole
        # Batch, accumulation and clipping are left to the Trainer, which takes them from the kpod config.
        assert plugin.deepspeed_config["gradient_accumulation_steps"] == "auto"
        assert plugin.deepspeed_config["gradient_clipping"] == "auto"
        return
    assert args.multi_gpu or args.use_fsdp  # torchrun starts the processes
    env = prepare_multi_gpu_env(args)
    if kind == DistributedType.FSDP:
        # The plugin each process builds from these variables (module sync needs a GPU device: off for the check).
        fsdp_env = {k: v for k, v in env.items() if k.startswith(("FSDP_", "ACCELERATE_"))}
        assert fsdp_env["FSDP_SYNC_MODULE_STATES"] == "true"
        with patch_environment(**{**fsdp_env, "FSDP_SYNC_MODULE_STATES": "false"}):
            plugin = FullyShardedDataParallelPlugin()
        assert plugin.fsdp_version == 1 and plugin.use_orig_params  # LoRA: frozen and trainable weights in a unit
        assert plugin.sharding_strategy.name == "FULL_SHARD" and plugin.state_dict_type.name == "FULL_STATE_DICT"
        assert not plugin.cpu_ram_efficient_loading  # every process loads the student (difficulty shards)
        from kpod.models import build_tiny_model

        layer_classes = {type(m).__name__ for m in build_tiny_model("llama", smol_tokenizer).modules()}
        assert plugin.transformer_cls_names_to_wrap == ["LlamaDecoderLayer"] and "LlamaDecoderLayer" in layer_classes
    if name == "cpu-2proc.yaml":
        assert args.use_cpu and env["ACCELERATE_MIXED_PRECISION"] == "no"


# ----------------------------------------------------------------------------- sharding, without processes
def test_shards_split_items_in_order(monkeypatch):
    assert dist.world_size() == 1 and dist.shard([1, 2, 3]) == [1, 2, 3] and dist.gather([4]) == [4]
    for world in (2, 3, 4):
        monkeypatch.setattr(dist, "world_size", lambda: world)
        for n in range(9):
            items = list(range(n))
            parts = []
            for r in range(world):
                monkeypatch.setattr(dist, "rank", lambda: r)
                parts.append(dist.shard(items))
            assert [x for p in parts for x in p] == items
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def assert_stage_partition(records: list[dict], stage: int, n: int) -> None:
    """Over all processes, the micro-batches of `stage` hold each of the n examples exactly once."""
    seen = sorted(i for r in records for b in r["seen"] if b["stage"] == stage for i in b["index"])
    assert seen == list(range(n)), f"stage {stage}: examples seen {seen}, expected each of 0..{n - 1} once"


def test_partition_check_catches_duplicated_and_missing_shards():
    ok = [{"seen": [{"stage": 0, "index": [0, 2]}]}, {"seen": [{"stage": 0, "index": [1, 3]}]}]
    assert_stage_partition(ok, 0, 4)
    duplicated = [ok[0], ok[0]]  # both processes trained on the same shard
    with pytest.raises(AssertionError, match="each of 0..3 once"):
        assert_stage_partition(duplicated, 0, 4)
    with pytest.raises(AssertionError):
        assert_stage_partition(ok[:1], 0, 4)


def test_seeded_length_sampler_splits_one_order_between_processes():
    import torch
    from accelerate.data_loader import BatchSamplerShard

    lengths = [17, 3, 44, 8, 25, 31, 9, 12, 40, 5, 22, 28]
    alone = list(BatchSampler(SeededLengthGroupedSampler(4, lengths, seed=3), 2, drop_last=False))
    shards = []
    for r in range(2):
        torch.manual_seed(100 + r)  # processes whose random states differ still draw the same order
        sampler = BatchSampler(SeededLengthGroupedSampler(4, lengths, seed=3), 2, drop_last=False)
        shards.append(list(BatchSamplerShard(sampler, num_processes=2, process_index=r)))
    # Step k: process 0 takes the (2k)-th batch, process 1 the (2k+1)-th: together the global batch of one process.
    assert [b for step in zip(*shards) for b in step] == alone
    assert sorted(i for b in alone for i in b) == list(range(len(lengths)))
    again = SeededLengthGroupedSampler(4, lengths, seed=3)
    again.set_epoch(1)
    assert list(again) != [i for b in alone for i in b]  # a new order every epoch


# ----------------------------------------------------------------------------- two processes vs one
def _worker_config(tmp_path: Path, student: Path, name: str) -> Path:
    cfg = {
        "name": "dist", "run_dir": str(tmp_path / f"run-{name}"), "seed": 0,
        "data": {"dataset": "svamp", "max_train_questions": 12},  # 12 examples: 3 global batches of 4 per stage
        "student": {"name": str(student),
                    "lora": {"rank": 4, "alpha": 8, "dropout": 0.0, "targets": ["q_proj", "v_proj"]}},
        # 2 per process x 2 processes, or 2 x grad_accum 2 alone; fp32, no dropout anywhere (the tiny Llama has none)
        "train": {"method": "kpod", "epochs": 2, "batch_size": 2, "global_batch_size": 4, "lr": 1e-3,
                  "warmup_steps": 0, "save_steps": 100, "logging_steps": 1, "precision": "fp32", "torch_threads": 1},
        "eval": {"max_examples": 4, "max_new_tokens": 8, "batch_size": 2, "zero_shot": True},
        "kpod": {"weighting": {"max_steps": 3, "batch_size": 4, "hidden_size": 16, "mlp_hidden_size": 16},
                 "clusters": 2, "difficulty_batch_size": 4},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(cmd: list[str], what: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", KPOD_NO_PROGRESS="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{what} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path, tiny_llama_dir):
    _run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
          str(ACCELERATE_CONFIGS / "cpu-2proc.yaml"), str(WORKER), str(_worker_config(tmp_path, tiny_llama_dir, "two")),
          str(tmp_path / "out-two")], "2-process run")
    _run([sys.executable, str(WORKER), str(_worker_config(tmp_path, tiny_llama_dir, "one")), str(tmp_path / "out-one")],
         "1-process run")
    ranks = [json.loads((tmp_path / "out-two" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    (one,) = [json.loads((tmp_path / "out-one" / "rank-0.json").read_text())]
    assert [(r["rank"], r["world_size"], r["grad_accum"]) for r in ranks + [one]] == [(0, 2, 1), (1, 2, 1), (0, 1, 2)]

    # One schedule: computed once by the main process, used by both; the same as the 1-process run's.
    schedule = json.loads((tmp_path / "run-two" / "curriculum" / "schedule.json").read_text())["given_steps"]
    assert ranks[0]["given_steps"] == ranks[1]["given_steps"] == schedule == one["given_steps"]
    n, stages = len(schedule[0]), len(schedule)
    assert n == 12 and stages == 2 and any(c > 0 for c in schedule[0])

    # Every stage (one epoch here) gives each example to exactly one process, once.
    assert all(r["steps_per_stage"] == 3 and r["max_steps"] == 6 for r in ranks + [one])
    for t in range(stages):
        assert_stage_partition(ranks, t, n)
        assert_stage_partition([one], t, n)
    # Step by step, the two processes' micro-batches are the global batch the single process accumulates.
    def per_step(records):
        out: dict[int, list[int]] = {}
        for r in records:
            for b in r["seen"]:
                out.setdefault(b["step"], []).extend(b["index"])
        return {k: sorted(v) for k, v in out.items()}

    assert per_step(ranks) == per_step([one]) and len(per_step([one])) == 6

    # The logged loss (averaged over processes by the Trainer) follows the 1-process run with grad accumulation.
    losses = [[row["loss"] for row in r["losses"]] for r in ranks + [one]]
    assert len(losses[2]) == 6 and losses[0] == losses[1]
    assert losses[0] == pytest.approx(losses[2], abs=1e-4)

    # Step difficulty scored in 2 shards and gathered equals the 1-process scores.
    diff_two, diff_one = (json.loads((tmp_path / f"run-{k}" / "curriculum" / "difficulty.json").read_text())
                          for k in ("two", "one"))
    assert (diff_two["processes"], diff_one["processes"]) == (2, 1)
    assert diff_two["difficulties"].keys() == diff_one["difficulties"].keys()
    for key, steps in diff_one["difficulties"].items():
        assert diff_two["difficulties"][key] == pytest.approx(steps, abs=1e-5)

    # Evaluation in 2 shards: the same predictions, in question order, written once.
    preds = [_jsonl(tmp_path / f"run-{k}" / "eval" / "zero-shot-test" / "predictions.jsonl") for k in ("two", "one")]
    assert [(p["id"], p["output"]) for p in preds[0]] == [(p["id"], p["output"]) for p in preds[1]]
    assert len(preds[0]) == 4
    results = json.loads((tmp_path / "run-two" / "eval" / "kpod-test" / "results.json").read_text())
    assert results["n"] == 4 and results["generation"]["processes"] == 2
    summary = json.loads((tmp_path / "run-two" / "train" / "summary.json").read_text())
    assert (summary["processes"], summary["global_batch_size"], summary["grad_accum"]) == (2, 4, 1)
