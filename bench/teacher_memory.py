"""Memory and throughput of a long `kpod teach` run: 10,000 questions against a local fake OpenAI-compatible server.

The server (tests/teacher_server.py) runs in its own process on 127.0.0.1 and stops by itself; this process runs
the teacher over a lazily generated question stream and samples its own resident memory (VmRSS from
/proc/self/status) every 0.2 s. Flat memory means rows are streamed to disk and no per-question state is kept:
the report gives RSS after 10 %, 50 % and 100 % of the questions, the growth per 1,000 questions over the second
half, and the peak (VmHWM).

    python bench/teacher_memory.py                     # 10,000 questions, writes results/teacher_memory.{json,md}
    python bench/teacher_memory.py --questions 2000 --no-write
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))

from kpod.data.records import Question  # noqa: E402
from kpod.teacher import TeachRun, load_teach_config  # noqa: E402
from teacher_server import API_KEY  # noqa: E402  (the fake server's key; not a secret)


def status_kib(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class MemorySampler(threading.Thread):
    """Samples (seconds, questions handed out, RSS MiB) until stopped."""

    def __init__(self, progress: list[int], every_s: float = 0.2):
        super().__init__(daemon=True)
        self.progress, self.every_s = progress, every_s
        self.samples: list[tuple[float, int, float]] = []  # about 5 per second: small next to the run
        self._halt = threading.Event()
        self._t0 = time.monotonic()

    def run(self) -> None:
        while not self._halt.is_set():
            self.samples.append((time.monotonic() - self._t0, self.progress[0], status_kib("VmRSS") / 1024))
            self._halt.wait(self.every_s)

    def stop(self) -> None:
        self._halt.set()
        self.join()
        self.samples.append((time.monotonic() - self._t0, self.progress[0], status_kib("VmRSS") / 1024))


def question_stream(n: int, progress: list[int]):
    """n "What is a + b?" questions, made one at a time (the stream itself holds nothing)."""
    for i in range(n):
        progress[0] = i + 1
        a, b = i, (i * 7919) % 1000  # every question distinct: nothing may come from the cache
        yield Question(id=f"sum-{i}", question=f"What is {a} + {b}?", answer=str(a + b), dataset="number")


def rss_at(samples, questions_done: int) -> float:
    """RSS of the first sample taken once `questions_done` questions were handed out."""
    return next(rss for _, done, rss in samples if done >= questions_done)


def start_server(max_seconds: float) -> tuple[subprocess.Popen, str]:
    server = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "teacher_server.py"), "--max-seconds", str(max_seconds)],
        stdout=subprocess.PIPE, text=True,
    )
    port = int(server.stdout.readline())
    return server, f"http://127.0.0.1:{port}/v1"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--mode", default="chat", choices=["chat", "completion"])
    parser.add_argument("--no-write", action="store_true", help="print only; do not write results/")
    args = parser.parse_args()

    server, url = start_server(max_seconds=1800)
    os.environ["OPENAI_API_KEY"] = API_KEY
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = load_teach_config(None, {
                "dataset": "custom", "file": "stream", "model": "fake-teacher", "base_url": url, "mode": args.mode,
                "concurrency": args.concurrency, "out": tmp, "timeout_s": 30,
            })  # fmt: skip
            progress = [0]
            rss_before = status_kib("VmRSS") / 1024
            sampler = MemorySampler(progress)
            sampler.start()
            summary = TeachRun(cfg, progress=False).run(question_stream(args.questions, progress), total=args.questions)
            sampler.stop()
            sizes = {p.name: p.stat().st_size for p in Path(tmp).iterdir() if p.is_file()}
    finally:
        server.kill()
        server.wait()

    samples = sampler.samples
    n = args.questions
    half, full = rss_at(samples, n // 2), samples[-1][2]
    result = {
        "questions": n,
        "mode": args.mode,
        "requests": summary["requests"]["total"],
        "asked": summary["requests"]["asked"],
        "answered_from_cache": summary["requests"]["cached"],
        "concurrency": args.concurrency,
        "kept": summary["kept"],
        "failed": summary["dropped"]["failed"],
        "wall_s": summary["wall_s"],
        "samples_per_s": summary["samples_per_s"],
        "requests_per_s": round(summary["requests"]["total"] / summary["wall_s"], 1),
        "rss_mib": {
            "before_run": round(rss_before, 1),
            "after_10pct": round(rss_at(samples, n // 10), 1),
            "after_50pct": round(half, 1),
            "after_100pct": round(full, 1),
            "peak_vmhwm": round(status_kib("VmHWM") / 1024, 1),
        },
        "rss_growth_mib_per_1k_questions_second_half": round((full - half) / (n / 2) * 1000, 3),
        "rss_samples": len(samples),
        "output_bytes": sizes,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (shared), Python {platform.python_version()}",
        "server": "tests/teacher_server.py in its own process on 127.0.0.1 (ThreadingHTTPServer, keep-alive)",
    }
    print(json.dumps(result, indent=1))
    if not args.no_write:
        out = REPO / "results"
        out.mkdir(exist_ok=True)
        (out / "teacher_memory.json").write_text(json.dumps(result, indent=1) + "\n")
        (out / "teacher_memory.md").write_text(markdown(result))
    return 0


def markdown(r: dict) -> str:
    rss = r["rss_mib"]
    return f"""# `kpod teach` memory over a long run

{r['questions']:,} questions ({r['mode']} mode, {r['requests']:,} HTTP requests, concurrency {r['concurrency']})
against the local fake OpenAI-compatible server, through the real `openai` client, the SQLite reply cache and the
streamed JSONL outputs. Command: `python bench/teacher_memory.py`. Machine: {r['machine']}.

| resident memory (MiB) | |
| --- | ---: |
| before the run (imports done) | {rss['before_run']} |
| after 10 % of the questions | {rss['after_10pct']} |
| after 50 % | {rss['after_50pct']} |
| after 100 % | {rss['after_100pct']} |
| peak (VmHWM) | {rss['peak_vmhwm']} |
| growth per 1,000 questions, second half | {r['rss_growth_mib_per_1k_questions_second_half']} |

Throughput: {r['samples_per_s']} questions/s, {r['requests_per_s']} requests/s ({r['wall_s']} s in all; the
server and the client share the same 2 cores, so this is a lower bound on what the client sustains, not an API's
speed). Kept {r['kept']:,}, failed {r['failed']}. Output sizes (bytes): {r['output_bytes']}.
"""


if __name__ == "__main__":
    sys.exit(main())
