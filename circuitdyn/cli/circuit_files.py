"""`circuitdyn view | export | import`: the viewer page, and the formats other circuit tools read.

    circuitdyn view base.safetensors grpo.safetensors --labels base,grpo --out grpo_vs_base.html
    circuitdyn export base.safetensors --format eap-ig-json --top 50 --out base_circuit.json
    circuitdyn import base_circuit.json --model zoo:gpt2 --granularity head --out imported.safetensors
"""

from __future__ import annotations

import argparse
from typing import Any

from circuitdyn.cli.inputs import HelpFormatter, count, out_path
from circuitdyn.graph import Granularity

FORMATS = ("eap-ig-json", "dot", "graphml")


def _labels(text: str) -> tuple[str, str]:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(parts):
        raise argparse.ArgumentTypeError(f"--labels takes two names separated by a comma (base,tuned), got {text!r}")
    return parts[0], parts[1]


def cmd_view(args: argparse.Namespace) -> int:
    from circuitdyn.analysis.viewer import view

    path = view(args.attribution, args.tuned, out=args.out, labels=args.labels, title=args.title or "", top=args.top,
                max_edges=args.max_edges)
    print(f"wrote {path} (open it in a browser; it needs no server or network)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from circuitdyn.attribution.files import load_attribution
    from circuitdyn.circuits import top_n
    from circuitdyn.circuits.formats import export_attribution

    attribution = load_attribution(args.attribution)
    circuit = None if args.top is None else top_n(attribution, min(args.top, attribution.graph.n_edges))
    path = export_attribution(attribution, args.out, args.format, circuit=circuit)
    marked = f"the top {circuit.n_edges} edges" if circuit is not None else "every edge"
    print(f"wrote {path} ({args.format}, {attribution.graph.n_edges} edges; in_graph: {marked})")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    import torch

    from circuitdyn.attribution.files import save_attribution
    from circuitdyn.circuits.formats import import_eap_ig_json
    from circuitdyn.core.outputs import check_output_file
    from circuitdyn.graph import Graph
    from circuitdyn.models import load_model

    check_output_file(args.out)
    model = load_model(args.model, device="cpu", dtype=torch.float32)
    graph = Graph.from_model(model, args.granularity, qkv=args.qkv)
    attribution = import_eap_ig_json(args.file, graph)
    save_attribution(attribution, args.out)
    print(f"wrote {args.out} ({graph.n_edges} edges from {args.file})")
    return 0


def add_commands(sub: Any) -> None:
    v = sub.add_parser("view", help="an interactive page of a circuit, or of a base and a tuned circuit and their "
                       "change: one self-contained HTML file", formatter_class=HelpFormatter)
    v.add_argument("attribution", help="attribution file (.safetensors)")
    v.add_argument("tuned", nargs="?", help="a second attribution over the same graph: the page shows the change")
    v.add_argument("--out", type=out_path, required=True, help="output .html")
    v.add_argument("--labels", type=_labels, default=("base", "tuned"), metavar="BASE,TUNED")
    v.add_argument("--title", help="page title (default: the labels)")
    v.add_argument("--top", type=count(1), default=30, help="edges drawn when the page opens")
    v.add_argument("--max-edges", type=count(1), default=1000, help="edges the page holds per ranking")
    v.set_defaults(fn=cmd_view)

    e = sub.add_parser("export", help="an attribution in another tool's format: EAP-IG's graph JSON, graphviz dot, "
                       "GraphML", formatter_class=HelpFormatter)
    e.add_argument("attribution", help="attribution file (.safetensors)")
    e.add_argument("--format", choices=FORMATS, default="eap-ig-json")
    e.add_argument("--top", type=count(0), help="mark the top N edges by |score| in_graph (default: every edge); "
                   "a dot file draws only those")
    e.add_argument("--out", type=out_path, required=True, help="output file")
    e.set_defaults(fn=cmd_export)

    i = sub.add_parser("import", help="EAP-IG's graph JSON as an attribution file, for a graph of the same model",
                       formatter_class=HelpFormatter)
    i.add_argument("file", help="EAP-IG graph JSON (Graph.to_json, or circuitdyn export --format eap-ig-json)")
    i.add_argument("--model", required=True, help="the model the scores are of: builds the graph to check them against")
    i.add_argument("--granularity", choices=[g.value for g in Granularity], default="head")
    i.add_argument("--qkv", choices=["split", "merged"], default="split", help="layer graphs: q/k/v destinations")
    i.add_argument("--out", type=out_path, required=True, help="output .safetensors")
    i.set_defaults(fn=cmd_import)
