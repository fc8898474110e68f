"""The circuit viewer: one self-contained HTML page (no server, no network; its script, style and data are inside
the file) that draws an attribution's strongest edges as a layered graph, or a base and a tuned attribution over
one shared layout with their change.

    circuitdyn.view("base.safetensors", "grpo.safetensors", out="grpo_vs_base.html")

The page: a slider for how many edges to draw (strongest first), edge width by |value| and colour by sign,
q/k/v inputs of a head told apart (solid / dashed / dotted, left / middle / right of the head), a hover with the
edge's scores and their spread over examples; with two attributions, views of base, tuned and the change, a
toggle between the change and the relative change, and the metric deltas beside the graph (viewer_data.py).
"""

from __future__ import annotations

import html
import json
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from circuitdyn.analysis.stats import N_RESAMPLES
from circuitdyn.analysis.viewer_data import page_data
from circuitdyn.core.atomic import atomic_write_text
from circuitdyn.core.outputs import ArtifactError, check_output_file
from circuitdyn.core.version import package_version

NOTE = ("The page holds the top {max_edges} edges of each ranking (base, tuned, change, relative change); the "
        "relative change divides by max(|base|, 1% of the largest |base|).")


def _asset(name: str) -> str:
    return (resources.files("circuitdyn.analysis") / "page" / name).read_text(encoding="utf-8")


def _attribution(value: Any, role: str) -> Any:
    """An Attribution, or one read from a file path."""
    if isinstance(value, (str, Path)):
        from circuitdyn.attribution.files import load_attribution

        return load_attribution(value)
    if not hasattr(value, "graph") or not hasattr(value, "scores"):
        raise ArtifactError(f"{role}: expected an Attribution or the path of an attribution file, got "
                            f"{type(value).__name__}")
    return value


def _script_json(data: dict[str, Any]) -> str:
    """JSON that cannot close its <script> element (every '<' escaped) and has no NaN (not JSON)."""
    return json.dumps(data, allow_nan=False, separators=(",", ":")).replace("<", "\\u003c")


def render_view(base: Any, tuned: Any | None = None, *, labels: tuple[str, str] = ("base", "tuned"), title: str = "",
                top: int = 30, max_edges: int = 1000, n_resamples: int = N_RESAMPLES) -> str:
    """The page as HTML text: `base` alone, or `base` and `tuned` (Attributions or attribution files) over
    one graph. `top` edges are drawn at first; the page holds the top `max_edges` of each ranking; the metric
    changes' CIs take `n_resamples` bootstrap resamples (the study's pooled tests take as many)."""
    a = _attribution(base, "base")
    b = None if tuned is None else _attribution(tuned, "tuned")
    data = page_data(a, b, labels=labels, title=title, max_edges=max_edges, top=top, n_resamples=n_resamples)
    note = NOTE.format(max_edges=max_edges) if b is not None else \
        f"The page holds the top {max_edges} edges by |score|."
    return Template(_asset("viewer.html")).substitute(
        VERSION=html.escape(package_version()), TITLE=html.escape(data["title"]), NOTE=html.escape(note),
        CSS=_asset("viewer.css"), DATA=_script_json(data), JS=_asset("viewer.js"))


def view(base: Any, tuned: Any | None = None, *, out: str | Path, labels: tuple[str, str] = ("base", "tuned"),
         title: str = "", top: int = 30, max_edges: int = 1000, n_resamples: int = N_RESAMPLES) -> Path:
    """Write the viewer page for `base` (and `tuned`) to `out` (an .html file, written atomically)."""
    path = check_output_file(out, ".html")  # before any work: a path that cannot be written costs nothing
    atomic_write_text(path, render_view(base, tuned, labels=labels, title=title, top=top, max_edges=max_edges,
                                        n_resamples=n_resamples))
    return path


__all__ = ["render_view", "view"]
