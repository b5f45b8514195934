"""One run over several processes (`accelerate launch`, one process per GPU): who computes what, and sharded work.

Run alone (no launcher), every helper here is a plain no-op: no accelerate state, no process group. Under
`accelerate launch` (DDP, FSDP, DeepSpeed, or the 2-process CPU config of the tests):

- the main process computes each cached artefact of a run (data, token weights, the KPOD schedule, ...) while the
  others wait at a barrier, and then every process reads the same files: the schedule is one global decision;
- step difficulty and evaluation are split into contiguous shards, one per process, and gathered back in order,
  which gives what one process computes (up to float round-off from different batch compositions);
- the Hugging Face Trainer shards the training batches itself (see `kpod.distill.trainer`).

    accelerate launch --config_file configs/accelerate/ddp-8gpu.yaml -m kpod run configs/default.yaml

    >>> with main_first(): ...                  # the main process runs the block first, the others after it
    >>> part = shard(items); out = gather(f(part))   # == f(items) on one process
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import timedelta

import torch

# The other processes wait at a barrier while the main process computes an artefact (token weights can take a
# while on a large dataset); NCCL's default 10-minute timeout would kill them.
BARRIER_TIMEOUT = timedelta(hours=3)
_WORLD_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def launched() -> bool:
    """True when this process is one of several (a launcher set the world size)."""
    return any(int(os.environ.get(v, "1") or 1) > 1 for v in _WORLD_SIZE_VARS)


def use_cpu() -> bool:
    """Train on the CPU: no GPU, or `accelerate launch --cpu` / a config with `use_cpu: true`."""
    return os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not torch.cuda.is_available()


def state():
    """accelerate's PartialState of a launched run (created on first use, with the same `cpu` choice as the
    Trainer's, so both share one process group); None when running alone."""
    if not launched():
        return None
    from accelerate import PartialState

    return PartialState(cpu=use_cpu(), timeout=BARRIER_TIMEOUT)


def world_size() -> int:
    s = state()
    return s.num_processes if s is not None else 1


def rank() -> int:
    s = state()
    return s.process_index if s is not None else 0


def is_main() -> bool:
    return rank() == 0


def device() -> torch.device:
    """This process's device: its GPU under a launcher, else the GPU if there is one, else the CPU."""
    s = state()
    if s is not None:
        return s.device
    return torch.device("cpu" if use_cpu() else "cuda")


def barrier() -> None:
    s = state()
    if s is not None:
        s.wait_for_everyone()


@contextmanager
def main_first(local: bool = False):
    """The main process (of the node, with `local`) runs the block first; the others run it once it has finished."""
    s = state()
    if s is None:
        yield
        return
    with s.local_main_process_first() if local else s.main_process_first():
        yield


def shard(items: list) -> list:
    """This process's contiguous part of `items` (the first processes get one more when it does not divide)."""
    n, r = world_size(), rank()
    if n == 1:
        return items
    size, extra = divmod(len(items), n)
    start = r * size + min(r, extra)
    return items[start: start + size + (r < extra)]


def gather(part: list) -> list:
    """The concatenation, in process order, of every process's `part` (on every process): gather(shard(x)) == x."""
    if world_size() == 1:
        return part
    from accelerate.utils import gather_object

    return gather_object(list(part))


def map_sharded(fn, items: list) -> list:
    """fn(items) with each process computing fn on its shard; fn maps a list to a list of the same length."""
    if world_size() == 1:
        return fn(items)
    part = shard(items)
    return gather(fn(part) if part else [])
