"""circuitdyn's EAP against auto-circuit 1.0.1's, at equal scores: the optional peer run.

auto-circuit runs on transformer-lens 2.x, which cannot share a process with circuitdyn (transformer-lens
4.x), so it runs in its own environment (`bash benchmarks/peers/setup.sh` builds `.venv-peers`) on the same
weights (a random-weight GPT-2-shaped Hugging Face folder, loaded there into a HookedTransformer without
weight processing) and the same tokens (32 digit strings of 64 tokens whose clean and corrupt forms differ
in the last one). Both score the head graph (q/k/v inputs apart) by noising EAP of the logit difference at
the last position.

Scores are compared edge by edge under one name mapping (`peers/auto_circuit_eap.py`). auto-circuit's score
is the gradient of its loss, minus the mean logit difference, summed over positions, so circuitdyn's score
with `aggregation="sum"` (the mean over examples of the logit difference's first-order change, summed over
positions) should be -1 times it: the least-squares scalar between them and the relative residual are
printed, not assumed.

Timing: each round runs the peer process (one warm-up call, then a timed one; its start-up and loading are
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
PEER = Path(__file__).resolve().parent / "peers" / "auto_circuit_eap.py"
SHAPE = dict(layers=6, d_model=256, heads=8, tokens=64, examples=32)


def peer_call(python: Path, folder: Path, data: Path, threads: int, out: Path) -> dict[str, Any]:
    cmd = [str(python), str(PEER), "--model", str(folder), "--data", str(data), "--out", str(out),
           "--threads", str(threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"the peer run failed:\n{done.stderr[-3000:]}")
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

    def ours() -> Any:
        return attribute(model, graph, data, "logit_diff", batch_size=len(data), memory_budget=big, aggregation="sum")

    default_threads = torch.get_num_threads()
    results: dict[str, Any] = {"shape": SHAPE, "machine": platform.processor() or platform.machine(),
                               "cpus": os.cpu_count(), "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tokens = Path(tmp) / "data.pt"
        torch.save({"clean": data.clean, "corrupt": data.corrupt, "answers": data.answers[:, 0], "foils": data.foils},
                   tokens)
        for threads in [int(t) for t in args.threads.split(",")]:
            torch.set_num_threads(threads or default_threads)
            a = ours()  # warm-up
            scores = dict(zip(graph.edge_names(), a.edge_scores().tolist()))
            per_round, peer_seconds, our_seconds = [], [], []
            for _ in range(args.rounds):
                peer = peer_call(python, folder, tokens, threads, Path(tmp) / "peer.json")
                t0 = time.perf_counter()
                ours()
                mine = time.perf_counter() - t0
                peer_seconds.append(peer["seconds"][0])
                our_seconds.append(mine)
                per_round.append(peer["seconds"][0] / mine)
            check = compare(scores, peer["scores"])  # the peer's scores are the same every round
            label = f"{threads or default_threads} threads"
            results["runs"][label] = {
                "auto_circuit_over_circuitdyn": {"min": min(per_round), "median": statistics.median(per_round)},
                "seconds": {"auto_circuit": peer_seconds, "circuitdyn": our_seconds}, "scores": check,
                "peer_versions": peer["versions"]}
            print(f"{label}: auto-circuit / circuitdyn = {min(per_round):.2f} (min), {statistics.median(per_round):.2f} "
                  f"(median) over {args.rounds} rounds; scores: circuitdyn = {check['scale']:+.6f} x auto-circuit, "
                  f"max relative residual {check['max_rel_residual']:.1e} over {check['edges']} edges", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    json.dump(results, sys.stdout, indent=1)
    return results


if __name__ == "__main__":
    main()
