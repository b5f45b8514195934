"""The persistent reply cache: one SQLite file in WAL mode, one row per answered request, committed as it arrives.

The key is a SHA-256 over (backend, model, the request's prompt or messages, its sampling parameters, its sample
index), so a re-run with the same settings answers from the file, a killed run resumes where it stopped and no
request is sent twice. Failures are not stored: a re-run asks them again. The base URL and the API key are not
part of the key and are never stored.

WAL with synchronous=NORMAL: a commit survives the process being killed (SIGKILL), not a power cut (the last few
replies would then be asked again). Several processes may share one cache file; writers wait on each other
(busy timeout) and the first reply stored for a key wins.

    >>> cache = ReplyCache("runs/teach-svamp/cache.sqlite")
    >>> key = cache.key("openai", "gpt-3.5-turbo", request)
    >>> cache.get(key) or cache.put(key, "openai", "gpt-3.5-turbo", request, reply)
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path

from kpod.teacher.backends import TeacherReply, TeacherRequest

_SCHEMA = """
CREATE TABLE IF NOT EXISTS replies (
    key TEXT PRIMARY KEY,
    backend TEXT NOT NULL,
    model TEXT NOT NULL,
    turn TEXT NOT NULL,
    sample INTEGER NOT NULL,
    request TEXT NOT NULL,          -- JSON of TeacherRequest.cache_payload() (no key, no URL)
    text TEXT NOT NULL,
    finish_reason TEXT,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    created REAL NOT NULL
)
"""


class ReplyCache:
    """Thread-safe: one connection shared by the worker threads behind a lock (SQLite writes are serial anyway)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)

    @staticmethod
    def key(backend: str, model: str, request: TeacherRequest) -> str:
        payload = {"backend": backend, "model": model, **request.cache_payload()}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def get(self, key: str) -> TeacherReply | None:
        with self._lock:
            row = self._db.execute(
                "SELECT text, finish_reason, prompt_tokens, completion_tokens FROM replies WHERE key = ?", (key,)
            ).fetchone()
        if row is None:
            return None
        return TeacherReply(text=row[0], finish_reason=row[1], prompt_tokens=row[2], completion_tokens=row[3], cached=True)

    def put(self, key: str, backend: str, model: str, request: TeacherRequest, reply: TeacherReply) -> None:
        """Store and commit at once (autocommit), so an answer is never lost to a later crash."""
        row = (key, backend, model, request.turn, request.sample, json.dumps(request.cache_payload(), ensure_ascii=False),
               reply.text, reply.finish_reason, reply.prompt_tokens, reply.completion_tokens, time.time())
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO replies VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "ReplyCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
