"""Pictures of learned token weights in the style of the paper's Figure 2: each token shaded red by its weight,
reasoning-step boundaries marked. An HTML page (no dependencies) and a PNG (matplotlib, drawn off-screen):

    from kpod.weighting import load_weights_jsonl, select_rows, write_weights_html, write_weights_png
    rows = select_rows(load_weights_jsonl("token_weights.jsonl"), n=4, seed=0)
    write_weights_html("weights.html", rows); write_weights_png("weights.png", rows)
"""

from __future__ import annotations

import html
import random
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from kpod.weighting.artefact import WeightedRationale, as_weighted_rationale, readable_token

RED = (220, 38, 38)


def select_rows(
    rows: Iterable[WeightedRationale | Mapping], keys: Sequence[str] | None = None, n: int = 3, seed: int = 0
) -> list[WeightedRationale]:
    """The rows with the given rationale keys (in that order), or else `n` rows drawn at random with `seed`."""
    rows = [as_weighted_rationale(r) for r in rows]
    if keys is not None:
        by_key = {r.rationale_key: r for r in rows}
        missing = [k for k in keys if k not in by_key]
        if missing:
            raise KeyError(f"no rationale with key(s) {missing}")
        return [by_key[k] for k in keys]
    return random.Random(seed).sample(rows, min(n, len(rows)))


def _step_starts(row: WeightedRationale) -> dict[int, int]:
    """Token index -> step number (1-based) for the first token of every step."""
    return {start: k for k, (start, _end) in enumerate(row.step_spans, start=1)}


def weights_to_html(rows: Iterable[WeightedRationale | Mapping], title: str = "Rationale token weights") -> str:
    """A self-contained HTML page: one block per rationale, tokens on a white-to-red scale by weight.

    Hovering a token shows its weight; a grey bar and a small step number open every reasoning step.
    """
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>",
        "body{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:2}",
        ".r{border:1px solid #ddd;border-radius:6px;padding:.5em 1em;margin:1em 0;white-space:pre-wrap}",
        ".t{border-radius:3px}",
        ".s{border-left:3px solid #888;margin-left:2px;padding-left:2px}",
        ".n{font-size:60%;color:#666;vertical-align:super}",
        ".legend span{display:inline-block;width:3em;text-align:center}",
        "</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<p class='legend'>weight: " + "".join(
            f"<span style='background:rgba({RED[0]},{RED[1]},{RED[2]},{w / 4:.2f})'>{w / 4:.2f}</span>" for w in range(5)
        ) + "</p>",
    ]
    for raw in rows:
        row = as_weighted_rationale(raw)
        starts = _step_starts(row)
        parts.append(f"<h3>{html.escape(row.rationale_key)}</h3><div class='r'>")
        for j, (text, weight) in enumerate(zip(row.tokens, row.weights)):
            if j in starts:
                parts.append(f"<span class='s'><span class='n'>{starts[j]}</span></span>")
            parts.append(
                f"<span class='t' title='{weight:.3f}' "
                f"style='background:rgba({RED[0]},{RED[1]},{RED[2]},{weight:.3f})'>{html.escape(readable_token(text))}</span>"
            )
        parts.append("</div>")
    parts.append("</body></html>")
    return "".join(parts)


def write_weights_html(path: str | Path, rows: Iterable[WeightedRationale | Mapping], title: str = "Rationale token weights") -> Path:
    """Write `weights_to_html(rows)` to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(weights_to_html(rows, title), encoding="utf-8")
    return path


def write_weights_png(
    path: str | Path,
    rows: Iterable[WeightedRationale | Mapping],
    chars_per_line: int = 90,
    dpi: int = 120,
) -> Path:
    """Draw the rationales as wrapped lines of token boxes coloured by weight (Reds colour map), with a thick
    black bar before every step and a colour bar; save as PNG. Uses matplotlib's Agg canvas directly, so it
    never touches the global pyplot backend."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    rows = [as_weighted_rationale(r) for r in rows]
    cmap = colormaps["Reds"]
    # Lay tokens out on a character grid (monospace text), one line per chars_per_line characters.
    boxes, lines = [], 0  # boxes: (line, column, width, text, weight, starts_step)
    headers = []
    for row in rows:
        headers.append((lines, row.rationale_key))
        lines += 1
        column, starts = 0, _step_starts(row)
        for j, (text, weight) in enumerate(zip(row.tokens, row.weights)):
            shown = readable_token(text).replace("\n", "⏎")
            width = max(len(shown), 1)
            if column + width > chars_per_line and column > 0:
                lines, column = lines + 1, 0
            boxes.append((lines, column, width, shown, weight, j in starts))
            column += width
        lines += 2  # the last line of this rationale and a gap

    # One x unit = one monospace character (0.6 em of an 8 pt font), one y unit = one line.
    char_w, line_h, margin, bar_w = 0.6 * 8 / 72, 0.24, 0.15, 1.0  # inches
    text_w, text_h = chars_per_line * char_w, max(lines, 1) * line_h
    fig_w, fig_h = text_w + 2 * margin + bar_w, text_h + 2 * margin
    fig = Figure(figsize=(fig_w, fig_h), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((margin / fig_w, margin / fig_h, text_w / fig_w, text_h / fig_h))
    ax.set_xlim(0, chars_per_line)
    ax.set_ylim(max(lines, 1), 0)
    ax.axis("off")
    for line, key in headers:
        ax.text(0, line + 0.75, key, fontsize=8, weight="bold", family="monospace", parse_math=False)
    for line, column, width, shown, weight, starts_step in boxes:
        ax.add_patch(
            _rectangle((column, line + 0.1), width, 0.8, cmap(weight))
        )
        ax.text(column, line + 0.72, shown, fontsize=8, family="monospace", parse_math=False,
                color="white" if weight > 0.65 else "black")
        if starts_step:
            ax.plot([column, column], [line + 0.05, line + 0.95], color="black", linewidth=2)
    colorbar_axes = fig.add_axes(((fig_w - 0.7) / fig_w, 0.1, 0.15 / fig_w, 0.8))
    fig.colorbar(ScalarMappable(norm=Normalize(0, 1), cmap=cmap), cax=colorbar_axes, label="weight")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _rectangle(xy, width, height, color):
    from matplotlib.patches import Rectangle

    return Rectangle(xy, width, height, facecolor=color, edgecolor="none")
