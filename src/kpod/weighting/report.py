"""Describe a weighting run's artefact: summary JSON, Figure-2-like HTML page and PNG, next to `weights.jsonl`.

    kpod weigh configs/<config>.yaml --show 4     # the CLI calls write_weighting_report(run_dir / "weighting")
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from kpod.weighting.artefact import load_weights_jsonl
from kpod.weighting.summary import summarize_weights
from kpod.weighting.viz import select_rows, write_weights_html, write_weights_png


def write_weighting_report(
    weighting_dir: str | Path, n_show: int = 4, seed: int = 0, keys: Sequence[str] | None = None
) -> dict:
    """Read `weighting_dir/weights.jsonl`; write `summary.json`, `weights.html` and (with matplotlib)
    `weights.png` there, showing the rationales `keys` or else `n_show` drawn with `seed`.
    Returns the summary (see `summarize_weights`) with a "files" entry listing the paths written; summary.json
    itself names them relative to its folder, so that the folder can be copied or moved (the stage cache does)."""
    weighting_dir = Path(weighting_dir)
    rows = load_weights_jsonl(weighting_dir / "weights.jsonl")
    summary = summarize_weights(rows)
    shown = select_rows(rows, keys=list(keys) if keys else None, n=n_show, seed=seed)
    files = [str(write_weights_html(weighting_dir / "weights.html", shown))]
    try:
        files.append(str(write_weights_png(weighting_dir / "weights.png", shown)))
    except ImportError:
        summary["png_skipped"] = "matplotlib is not installed (pip install kpod[plots])"
    summary["shown"] = [r.rationale_key for r in shown]
    summary_path = weighting_dir / "summary.json"
    files.append(str(summary_path))
    summary["files"] = [Path(f).name for f in files]
    summary_path.write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return {**summary, "files": files}
