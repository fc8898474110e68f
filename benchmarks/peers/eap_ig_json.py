"""hannamw/EAP-IG reads circuitdyn's graph JSON, run in the peer environment (benchmarks/peers/setup.sh).

Loads a file `circuitdyn export --format eap-ig-json` wrote with EAP-IG's own `Graph.from_json`, compares every
edge's score and in_graph with the file, and writes the graph back with EAP-IG's `Graph.to_json` (for
interop_eap_ig.py to import into circuitdyn). Prints one JSON line: edges read, mismatches, edges in the graph.

    .venv-peers/bin/python benchmarks/peers/eap_ig_json.py --graph FILE.json --out EAP_IG_WRITTEN.json
"""

from __future__ import annotations

import argparse
import json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graph", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    from eap.graph import Graph

    with open(args.graph) as f:
        doc = json.load(f)
    graph = Graph.from_json(args.graph)
    mismatches = [name for name, edge in graph.edges.items()
                  if float(edge.score) != doc["edges"][name]["score"] or bool(edge.in_graph) != doc["edges"][name]["in_graph"]]
    graph.to_json(args.out)
    print(json.dumps({"edges": len(graph.edges), "file_edges": len(doc["edges"]), "mismatches": len(mismatches),
                      "in_graph": int(graph.in_graph.sum())}))


if __name__ == "__main__":
    main()
