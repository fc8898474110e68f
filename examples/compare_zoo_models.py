"""Compare a zoo model with a perturbed copy of itself: paired circuit metrics, tables and plots.

    python examples/compare_zoo_models.py --model zoo:llama --out runs/compare_zoo
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

from circuitdyn.analysis import plot
from circuitdyn.analysis.comparison import compare, correct_mask, edge_diff
from circuitdyn.analysis.report import comparison_records, direction_sentence, markdown_table, save_records, to_csv
from circuitdyn.attribution import attribute
from circuitdyn.attribution.files import save_attribution
from circuitdyn.circuits.circuit import prune, top_n
from circuitdyn.graph import Graph
from circuitdyn.models import LoadedModel, load_model
from circuitdyn.tasks import Addition, tokenize_pairs


def perturbed(model: LoadedModel, scale: float, seed: int) -> LoadedModel:
    """A copy whose attention output projections are scaled up and jittered."""
    twin = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in twin.bridge.original_model.named_parameters():
            if any(k in name for k in ("o_proj", "c_proj", "attn.dense", "out_proj")) and p.ndim == 2:
                p.mul_(scale).add_(0.02 * torch.randn(p.shape, generator=gen))
    return twin


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="zoo:llama")
    parser.add_argument("--out", default="runs/compare_zoo")
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--scale", type=float, default=1.3)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = load_model(args.model)
    tuned = perturbed(base, args.scale, seed=0)
    data = tokenize_pairs(base.tokenizer, Addition().examples(args.examples, seed=0), answer_tokens=2)
    keep = correct_mask(base, data) & correct_mask(tuned, data)
    print(f"{int(keep.sum())}/{len(data)} prompts answered correctly by both models")
    graph = Graph.from_model(base, "head")
    kw = dict(ablation="zero", per_example=True)
    a_base = attribute(base, graph, data, "answer_nll", **kw)
    a_tuned = attribute(tuned, graph, data, "answer_nll", **kw)
    save_attribution(a_base, out / "base.safetensors")
    save_attribution(a_tuned, out / "tuned.safetensors")
    comp = compare(a_base, a_tuned, name=f"x{args.scale} attn-out", keep=keep)
    records = comparison_records([comp], model=args.model)
    to_csv(records, out / "comparison.csv")
    save_records(records, out / "comparison.json")
    diff = edge_diff(a_base, a_tuned, k=20)
    summary = [f"# {args.model} vs perturbed copy", "", markdown_table([comp]), "",
               direction_sentence(comp, "intensity"), direction_sentence(comp, "normalized_entropy"), "",
               f"Top-20 edges: Jaccard {diff['jaccard']:.2f}, Spearman {diff['spearman']:.2f}; "
               f"gained {diff['gained'][:5]}, lost {diff['lost'][:5]}"]
    (out / "summary.md").write_text("\n".join(summary) + "\n")
    plot.score_heatmap(a_base, out / "scores_base.png", title=f"{args.model}: zero-ablation EAP (answer NLL)")
    plot.delta_heatmap(a_base, a_tuned, out / "delta.png")
    plot.metric_bars([comp], ["intensity", "normalized_entropy", "gini", "kurtosis"], out / "metric_bars.png")
    plot.score_distribution({"base": a_base, "tuned": a_tuned}, out / "score_distribution.png")
    plot.per_layer_lines({"base": a_base, "tuned": a_tuned}, "intensity", out / "per_layer_intensity.png")
    circuit = prune(top_n(a_base, 25))
    plot.draw_circuit(circuit, a_base.scores, out / "circuit.png", title=f"{args.model} top-25 (pruned)")
    print("\n".join(summary))
    print(f"wrote {out}; total wall time {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    from circuitdyn.cli import run_command

    sys.exit(run_command("compare_zoo_models.py", main))
