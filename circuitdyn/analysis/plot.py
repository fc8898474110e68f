"""Plots as matplotlib Figures (object API: no pyplot, no global style changes). Each function returns the
Figure and, given `path`, also writes a PNG."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from circuitdyn.analysis.comparison import Comparison
from circuitdyn.analysis.metrics import per_layer_metrics
from circuitdyn.circuits.circuit import Circuit

if TYPE_CHECKING:  # matplotlib is imported when a figure is made (it costs seconds at start-up)
    from matplotlib.figure import Figure


def _figure(**kwargs: Any) -> "Figure":
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _finish(fig: "Figure", path: str | Path | None) -> "Figure":
    fig.tight_layout()
    if path is not None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(fig)
        fig.savefig(str(path), dpi=130)
    return fig


def fit_title(ax: Any, text: str, fontsize: float | None = None) -> Any:
    """`ax.set_title(text)` and `tight_layout()`, the title's lines wrapped at words until it lies inside the
    figure (a long title is otherwise cut at the figure's edge). Call it once the axes are drawn."""
    import textwrap

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = ax.figure
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    renderer = canvas.get_renderer()
    lines = text.split("\n")
    width = max(len(line) for line in lines)
    while True:
        title = ax.set_title("\n".join(textwrap.fill(line, width) for line in lines), fontsize=fontsize)
        fig.tight_layout()
        box = title.get_window_extent(renderer)
        if (box.x0 >= 0 and box.x1 <= fig.bbox.width) or width <= 16:
            return title
        width = max(16, int(width * 0.85))


def _masked(attribution: Any, scores: torch.Tensor | None = None) -> np.ndarray:
    s = (attribution.scores if scores is None else scores).numpy().astype(float)
    return np.where(attribution.graph.edge_mask.numpy(), s, np.nan)


def _heatmap(fig: "Figure", ax: Any, graph: Any, values: np.ndarray, title: str) -> None:
    lim = np.nanmax(np.abs(values)) or 1.0
    im = ax.imshow(values, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_xlabel("destination (layer order)")
    ax.set_ylabel("source (layer order)")
    if graph.n_dst <= 40:
        ax.set_xticks(range(graph.n_dst), [d.name for d in graph.destinations], rotation=90, fontsize=6)
    if graph.n_src <= 40:
        ax.set_yticks(range(graph.n_src), [s.name for s in graph.sources], fontsize=6)
    fit_title(ax, title)


def score_heatmap(attribution: Any, path: str | Path | None = None, title: str = "edge scores") -> "Figure":
    fig = _figure(figsize=(9, 6))
    _heatmap(fig, fig.add_subplot(), attribution.graph, _masked(attribution), title)
    return _finish(fig, path)


def delta_heatmap(base: Any, tuned: Any, path: str | Path | None = None, title: str = "tuned - base") -> "Figure":
    if base.graph.spec != tuned.graph.spec:
        raise ValueError("delta_heatmap needs attributions over the same graph")
    fig = _figure(figsize=(9, 6))
    _heatmap(fig, fig.add_subplot(), base.graph, _masked(base, tuned.scores - base.scores), title)
    return _finish(fig, path)


def metric_bars(comparisons: Sequence[Comparison], metrics: Sequence[str], path: str | Path | None = None) -> "Figure":
    """Mean paired delta per comparison with its bootstrap 95% CI, one panel per metric."""
    fig = _figure(figsize=(3.2 * len(metrics), 3.6))
    for k, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), k + 1)
        deltas = [c[metric] for c in comparisons]
        x = np.arange(len(deltas))
        mid = np.array([d.delta for d in deltas])
        err = np.array([[d.delta - d.ci_low for d in deltas], [d.ci_high - d.delta for d in deltas]])
        ax.bar(x, mid, yerr=err, capsize=4, color=["tab:red" if m > 0 else "tab:blue" for m in mid])
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(x, [c.name for c in comparisons], rotation=30, ha="right", fontsize=8)
        ax.set_title(f"delta {metric}", fontsize=9)
    return _finish(fig, path)


def score_distribution(attributions: Mapping[str, Any], path: str | Path | None = None) -> "Figure":
    """Histogram of |edge score| (log scale) per model."""
    fig = _figure(figsize=(6, 4))
    ax = fig.add_subplot()
    values = {k: a.edge_scores().abs().numpy() for k, a in attributions.items()}
    positive = np.concatenate([v[v > 0] for v in values.values()])
    if positive.size == 0:
        raise ValueError("every score is zero: nothing to plot")
    bins: Any = np.logspace(np.log10(positive.min()), np.log10(positive.max()), 40)
    for name, v in values.items():
        ax.hist(v[v > 0], bins=bins, histtype="step", lw=1.5, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("|edge score|")
    ax.set_ylabel("edges")
    ax.legend(fontsize=8)
    return _finish(fig, path)


def per_layer_lines(attributions: Mapping[str, Any], metric: str, path: str | Path | None = None) -> "Figure":
    fig = _figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for name, a in attributions.items():
        layers = per_layer_metrics(a)
        xs = sorted(layers)
        ax.plot(xs, [float(layers[x][metric]) for x in xs], marker="o", label=name)
        ax.set_xticks(xs, [str(x) if x < a.graph.spec.n_layers else "logits" for x in xs])
    ax.set_xlabel("destination layer (last = logits)")
    ax.set_ylabel(metric)
    ax.legend(fontsize=8)
    return _finish(fig, path)


def draw_circuit(circuit: Circuit, scores: torch.Tensor | None = None, path: str | Path | None = None,
                 title: str = "circuit") -> "Figure":
    """Node-level drawing: sources and the nodes that read them, placed by layer, edges weighted by |score|."""
    g = circuit.graph
    edges: dict[tuple[str, str], float] = {}
    writers = {g.sources[i].name for i, j in g.edges() if circuit.edges[i, j]}
    for i, j in g.edges():
        if circuit.edges[i, j]:
            w = abs(float(scores[i, j])) if scores is not None else 1.0
            owners = g.owners(j) or ("logits",)
            # a shared kv head reads into every head of its group: draw only the heads in the circuit
            owners = tuple(o for o in owners if o in writers or o == "logits") or owners
            for owner in owners:
                edges[(g.sources[i].name, owner)] = edges.get((g.sources[i].name, owner), 0.0) + w
    layer_of = {s.name: s.layer for s in g.sources}
    layer_of["logits"] = g.spec.n_layers
    nodes = sorted({n for e in edges for n in e}, key=lambda n: (layer_of[n], n))
    rows: dict[int, list[str]] = {}
    for n in nodes:
        rows.setdefault(layer_of[n], []).append(n)
    pos = {n: (i - (len(rows[l]) - 1) / 2, l) for l, names in rows.items() for i, n in enumerate(names)}
    fig = _figure(figsize=(8, 1.2 + 1.1 * (g.spec.n_layers + 2)))
    ax = fig.add_subplot()
    top = max(edges.values(), default=1.0) or 1.0
    for (u, v), w in edges.items():
        (x0, y0), (x1, y1) = pos[u], pos[v]
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops={"arrowstyle": "-|>", "lw": 0.5 + 3 * w / top, "alpha": 0.6, "color": "tab:gray",
                                "shrinkA": 14, "shrinkB": 14})
    for n, (x, y) in pos.items():
        ax.scatter([x], [y], s=900, color="tab:orange" if n.startswith("a") else "tab:green", zorder=3)
        ax.text(x, y, n, ha="center", va="center", fontsize=7, zorder=4)
    ax.set_yticks(range(-1, g.spec.n_layers + 1), ["input"] + [f"layer {l}" for l in range(g.spec.n_layers)] + ["logits"])
    ax.set_xticks([])
    fit_title(ax, f"{title} ({circuit.n_edges} edges)")
    return _finish(fig, path)
