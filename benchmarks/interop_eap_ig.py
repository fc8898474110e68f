"""Interop with hannamw/EAP-IG's graph JSON, both ways, against EAP-IG's own code (not a timed benchmark).

For each zoo family whose key/value heads equal its query heads (the graphs EAP-IG builds: gpt2, neox), a head
graph attribution is exported with a top-20 circuit, EAP-IG loads it (`Graph.from_json`) and writes it back
(`Graph.to_json`) in the peer environment (benchmarks/peers/eap_ig_json.py), and circuitdyn imports EAP-IG's
file: scores and in_graph must equal the original on every edge. Writes benchmarks/results/interop_eap_ig.json.

    bash benchmarks/peers/setup.sh   # once: .venv-peers with EAP-IG at the pinned commit
    .venv/bin/python benchmarks/interop_eap_ig.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import torch

from circuitdyn import attribute, load_model, top_n
from circuitdyn.circuits.formats import export_attribution, import_eap_ig_circuit, import_eap_ig_json
from circuitdyn.tasks import get_task, tokenize_pairs

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers-python", default=str(ROOT / ".venv-peers" / "bin" / "python"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "interop_eap_ig.json"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in ("gpt2", "neox"):
            model = load_model(f"zoo:{family}")
            data = tokenize_pairs(model.tokenizer, get_task("addition").examples(16, seed=0))
            ours = attribute(model, "head", data, "logit_diff")
            circuit = top_n(ours, 20)
            mine, theirs = Path(tmp) / f"{family}.json", Path(tmp) / f"{family}_eap_ig.json"
            export_attribution(ours, mine, circuit=circuit)
            done = subprocess.run([args.peers_python, str(ROOT / "benchmarks" / "peers" / "eap_ig_json.py"), "--graph",
                                   str(mine), "--out", str(theirs)], capture_output=True, text=True, check=False)
            if done.returncode:
                raise SystemExit(f"the peer failed: {done.stderr[-2000:]}")
            peer = json.loads(done.stdout.strip().splitlines()[-1])
            back = import_eap_ig_json(theirs, ours.graph)
            row = {"family": family, "edges": ours.graph.n_edges, "eap_ig_read": peer,
                   "scores_equal_after_eap_ig_round_trip": bool(torch.equal(back.scores, ours.scores)),
                   "in_graph_equal": bool(torch.equal(import_eap_ig_circuit(theirs, ours.graph).edges, circuit.edges))}
            rows.append(row)
            print(json.dumps(row))
    Path(args.out).write_text(json.dumps({"eap_ig_commit": "795f5607b25638935aec89aee3c1cb4bd9ed72f1", "rows": rows},
                                         indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
