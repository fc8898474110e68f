"""circuitdyn's EAP and EAP-IG against their peers' at equal scores: the optional peer run.

The peers: auto-circuit 1.0.1 (EAP) and hannamw/EAP-IG at commit 795f560 (EAP, and EAP-IG-inputs with its
own step rule, the counterfactual end included: circuitdyn's `quadrature="right"`). Both run on
transformer-lens 2.x, which cannot share a process with circuitdyn (transformer-lens 4.x), so they run in
their own environment (`bash benchmarks/peers/setup.sh` builds `.venv-peers`) on the same weights (a
random-weight GPT-2-shaped Hugging Face folder, loaded there into a HookedTransformer without weight
processing) and the same tokens (32 digit strings of 64 tokens whose clean and corrupt forms differ in the
last one). All score the head graph (q/k/v inputs apart) by noising the logit difference at the last
position, summed over positions.

Scores are compared edge by edge under one name mapping (auto-circuit's names are mapped in
`peers/auto_circuit_eap.py`; EAP-IG's are circuitdyn's). auto-circuit's score is the gradient of its loss,
minus the mean logit difference, so circuitdyn's score (`aggregation="sum"`: the mean over examples of the
logit difference's first-order change, summed over positions) should be -1 times it; EAP-IG's, with a
metric summed over the batch and divided by the number of examples, +1 times. The least-squares scalar
between them and the relative residual are printed, not assumed.

Timing: each round runs each peer process (one warm-up call, then a timed one; its start-up and loading are
not counted) and then circuitdyn in this process (warmed up once before the rounds); the ratio is taken per
round, and min and median over rounds are reported, at 1 thread and at the default thread count.

    make bench-peers        (= bash benchmarks/peers/setup.sh && python benchmarks/bench_peers.py --json ...)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from circuitdyn.attribution import attribute
from circuitdyn.graph import Graph
from circuitdyn.tasks import tokenize_pairs

try:  # run as a script or as a module of the benchmarks package
    from bench_shapes import digit_pairs, gpt2_shape
except ImportError:
    from benchmarks.bench_shapes import digit_pairs, gpt2_shape

ROOT = Path(__file__).resolve().parents[1]
PEERS_DIR = Path(__file__).resolve().parent / "peers"
SHAPE = dict(layers=6, d_model=256, heads=8, tokens=64, examples=32)
IG_STEPS = 5


@dataclass(frozen=True)
class Peer:
    """One peer computation: its script and arguments, and circuitdyn's attribute() overrides for the same
    scores."""

    name: str
    script: str
    args: tuple[str, ...]
    ours: dict[str, Any]


PEERS = {
    "auto-circuit-eap": Peer("auto-circuit 1.0.1 EAP", "auto_circuit_eap.py", (), {"method": "eap"}),
    "eap-ig-eap": Peer("EAP-IG (795f560) EAP", "eap_ig_eap.py", (), {"method": "eap"}),
    "eap-ig-ig": Peer(f"EAP-IG (795f560) EAP-IG-inputs, {IG_STEPS} steps", "eap_ig_eap.py",
                      ("--steps", str(IG_STEPS)),
                      {"method": "eap-ig-inputs", "steps": IG_STEPS, "quadrature": "right"}),
}


def peer_call(python: Path, peer: Peer, folder: Path, data: Path, threads: int, out: Path) -> dict[str, Any]:
    cmd = [str(python), str(PEERS_DIR / peer.script), "--model", str(folder), "--data", str(data), "--out",
           str(out), "--threads", str(threads), *peer.args]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"the peer run ({peer.name}) failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def compare(ours: dict[str, float], theirs: dict[str, float]) -> dict[str, Any]:
    """The least-squares scalar c with ours ~ c * theirs, and max |ours - c * theirs| / max |ours|."""
    if set(ours) != set(theirs):
        only = sorted(set(ours) ^ set(theirs))[:5]
        raise SystemExit(f"the graphs differ: {len(set(ours) ^ set(theirs))} edges in one only, e.g. {only}")
    names = sorted(ours)
    a = torch.tensor([ours[n] for n in names], dtype=torch.float64)
    b = torch.tensor([theirs[n] for n in names], dtype=torch.float64)
    c = float(a @ b / (b @ b))
    return {"edges": len(names), "scale": c, "max_rel_residual": float((a - c * b).abs().max() / a.abs().max())}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--peers-python", default=str(ROOT / ".venv-peers" / "bin" / "python"))
    parser.add_argument("--threads", default="1,0", help="comma-separated torch thread counts (0: the default)")
    parser.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated, of {sorted(PEERS)}")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    python = Path(args.peers_python)
    if not python.exists():
        raise SystemExit(f"no peer environment at {python}: build it with `bash benchmarks/peers/setup.sh` "
                         "(optional; circuitdyn's own benchmarks do not need it)")
    model = gpt2_shape(SHAPE["layers"], SHAPE["d_model"], SHAPE["heads"], SHAPE["tokens"])
    folder = Path(model.provenance.spec)  # the folder gpt2_shape wrote and loaded
    data = tokenize_pairs(model.tokenizer, digit_pairs(SHAPE["examples"], SHAPE["tokens"]))
    if not bool(data.mask.all()) or not bool((data.answer_pos == data.clean.shape[1] - 1).all()):
        raise SystemExit("the peer run needs unpadded prompts answered at the last position")
    graph = Graph.from_model(model, "head")
    big = 1 << 40

    def ours(peer: Peer) -> Any:
        return attribute(model, graph, data, "logit_diff", batch_size=len(data), memory_budget=big, aggregation="sum",
                         **peer.ours)

    peers = [PEERS[name] for name in args.peers.split(",")]
    default_threads = torch.get_num_threads()
    results: dict[str, Any] = {"shape": SHAPE, "machine": platform.processor() or platform.machine(),
                               "cpus": os.cpu_count(), "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tokens = Path(tmp) / "data.pt"
        torch.save({"clean": data.clean, "corrupt": data.corrupt, "answers": data.answers[:, 0], "foils": data.foils},
                   tokens)
        for threads in [int(t) for t in args.threads.split(",")]:
            torch.set_num_threads(threads or default_threads)
            label = f"{threads or default_threads} threads"
            for peer in peers:
                a = ours(peer)  # warm-up
                scores = dict(zip(graph.edge_names(), a.edge_scores().tolist()))
                per_round, peer_seconds, our_seconds = [], [], []
                for _ in range(args.rounds):
                    theirs = peer_call(python, peer, folder, tokens, threads, Path(tmp) / "peer.json")
                    t0 = time.perf_counter()
                    ours(peer)
                    mine = time.perf_counter() - t0
                    peer_seconds.append(theirs["seconds"][0])
                    our_seconds.append(mine)
                    per_round.append(theirs["seconds"][0] / mine)
                check = compare(scores, theirs["scores"])  # the peer's scores are the same every round
                results["runs"].setdefault(label, {})[peer.name] = {
                    "peer_over_circuitdyn": {"min": min(per_round), "median": statistics.median(per_round)},
                    "seconds": {"peer": peer_seconds, "circuitdyn": our_seconds}, "scores": check,
                    "peer_versions": theirs["versions"]}
                print(f"{label}, {peer.name}: peer / circuitdyn = {min(per_round):.2f} (min), "
                      f"{statistics.median(per_round):.2f} (median) over {args.rounds} rounds; scores: circuitdyn = "
                      f"{check['scale']:+.6f} x peer, max relative residual {check['max_rel_residual']:.1e} over "
                      f"{check['edges']} edges", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    json.dump(results, sys.stdout, indent=1)
    return results


if __name__ == "__main__":
    main()
