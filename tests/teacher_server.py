"""A small OpenAI-compatible HTTP server on 127.0.0.1 for the teacher tests and the memory benchmark.

It answers POST /v1/chat/completions and /v1/completions like a real API (JSON body, `usage`), counts the
requests it receives per prompt, and can be told to misbehave per prompt and attempt: an HTTP status with
headers (429 + Retry-After, 500), a delay (for client timeouts) or a malformed body. Questions of the form
"What is A + B?" are answered correctly by `arithmetic_reply`; tests can pass their own solver.

In the test process:   with FakeTeacherServer(faults=my_faults) as server: ... server.url, server.requests
As a process:          python tests/teacher_server.py --max-seconds 300     (prints the port, then serves)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

API_KEY = "sk-kpod-test-7f3a9c2e51d84b06"  # what the tests use; they grep outputs for it
_SUM = re.compile(r"What is (-?\d+) \+ (-?\d+)\?")


@dataclass
class Fault:
    """How to answer one request instead of normally. `body` None means a normal JSON body."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    delay: float = 0.0


def arithmetic_reply(prompt: str, chat: bool) -> str:
    """A correct teacher for "What is A + B?": completion turn 1, completion turn 2 ("... the answer is"), or chat."""
    match = _SUM.search(prompt)
    if not match:
        return "I am not sure about this one."
    a, b = int(match.group(1)), int(match.group(2))
    if not chat and prompt.rstrip().endswith("the answer is"):
        return f" {a + b}."
    reasoning = f"We add {a} and {b}: {a} + {b} = {a + b}."
    return reasoning + (f"\nTherefore, the answer is {a + b}." if chat else "")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # bursts of concurrent connects


class FakeTeacherServer:
    def __init__(
        self,
        solver: Callable[[str, bool], str] = arithmetic_reply,
        faults: Callable[[str, int], Fault | None] | None = None,
        delay: float = 0.0,
        api_key: str = API_KEY,
        port: int = 0,
    ):
        self.solver, self.faults, self.delay, self.api_key = solver, faults, delay, api_key
        self.requests: Counter = Counter()  # prompt -> requests received
        self.served: Counter = Counter()  # prompt -> normal 200 answers sent
        self.arrivals: dict[str, list[float]] = defaultdict(list)  # prompt -> arrival times (monotonic)
        self.bad_auth = 0
        self.active = 0  # requests being handled right now
        self.max_active = 0
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", port), self._handler_class())
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "FakeTeacherServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> "FakeTeacherServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ request handling
    def _answer(self, path: str, body: dict, authorization: str | None) -> tuple[int, dict, bytes, float]:
        if authorization != f"Bearer {self.api_key}":
            with self._lock:
                self.bad_auth += 1
            error = {"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error"}}
            return 401, {}, json.dumps(error).encode(), 0.0
        chat = path.endswith("/chat/completions")
        prompt = body["messages"][-1]["content"] if chat else body["prompt"]
        with self._lock:
            self.requests[prompt] += 1
            self.arrivals[prompt].append(time.monotonic())
            attempt = self.requests[prompt]
        fault = self.faults(prompt, attempt) if self.faults else None
        if fault is not None and (fault.status != 200 or fault.body is not None):
            body_bytes = fault.body if fault.body is not None else json.dumps({"error": {"message": "scripted failure"}}).encode()
            return fault.status, fault.headers, body_bytes, fault.delay
        text, finish = self.solver(prompt, chat), "stop"
        words = text.split(" ")
        if len(words) > body.get("max_tokens", len(words)):  # a word per token: cut where a real API stops
            text, finish = " ".join(words[: body["max_tokens"]]), "length"
        choice = {"index": 0, "finish_reason": finish, "logprobs": None}
        choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
        n_prompt, n_completion = len(prompt.split()), len(text.split())
        reply = {
            "id": f"cmpl-{attempt}", "object": "chat.completion" if chat else "text_completion", "created": 0,
            "model": body.get("model", "fake"), "choices": [choice],
            "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_completion, "total_tokens": n_prompt + n_completion},
        }  # fmt: skip
        with self._lock:
            self.served[prompt] += 1
        return 200, {}, json.dumps(reply).encode(), self.delay + (fault.delay if fault else 0.0)

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like a real API

            def do_POST(self):  # noqa: N802 (http.server's naming)
                with server._lock:
                    server.active += 1
                    server.max_active = max(server.max_active, server.active)
                try:
                    self._post()
                finally:
                    with server._lock:
                        server.active -= 1

            def _post(self):
                length = int(self.headers.get("Content-Length", 0))
                try:
                    body = json.loads(self.rfile.read(length))
                    status, headers, payload, delay = server._answer(self.path, body, self.headers.get("Authorization"))
                except (ValueError, KeyError, TypeError):
                    status, headers, payload, delay = 400, {}, b'{"error": {"message": "bad request"}}', 0.0
                if delay:
                    time.sleep(delay)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    self.close_connection = True

            def log_message(self, format, *args):  # quiet
                pass

        return Handler


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--max-seconds", type=float, default=600, help="stop by itself after this long")
    args = parser.parse_args()
    server = FakeTeacherServer(delay=args.delay, port=args.port).start()
    print(server.port, flush=True)
    deadline = time.monotonic() + args.max_seconds
    try:
        while time.monotonic() < deadline:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
