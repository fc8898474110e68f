"""eNTK time and memory vs model size: exact where the per-sample gradients fit, CountSketch-projected and
layer-subset beyond, with the projection's error against the exact kernel where both run.

Each configuration runs in a child process of its own (its peak RSS untouched by the others'); 16 probes
of `addition` (zoo) or `qa_addition` (SmolLM2-135M-Instruct), first answer token.

    python benchmarks/bench_ntk.py [--json out.json] [--models zoo:llama smollm2-135m]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

N_PROBES = 16
MODES = ("exact", "projected_4096", "last2_exact")


def measure(spec: str, mode: str) -> dict[str, Any]:
    import time

    from circuitdyn.dynamics import entk
    from circuitdyn.dynamics.projection import relative_frobenius_error
    from circuitdyn.models import load_model
    from circuitdyn.tasks import get_task, tokenize_pairs

    model = load_model(spec, device="cpu")
    task = get_task("addition" if spec.startswith("zoo:") else "qa_addition")
    probe = tokenize_pairs(model.tokenizer, task.examples(N_PROBES, seed=3), answer_tokens=1)
    n_layers = len(model.bridge.blocks)
    kw: dict[str, Any] = {"memory_budget": 6 * 2**30}  # the exact SmolLM2 kernel (~8.6 GB) is refused
    if mode == "projected_4096":
        kw["projection"] = 4096
    elif mode == "last2_exact":
        kw["layers"] = [n_layers - 2, n_layers - 1]
    t0 = time.perf_counter()
    k = entk(model, probe, **kw)
    out: dict[str, Any] = {"seconds": time.perf_counter() - t0,
                           "params": sum(p.numel() for p in model.bridge.parameters())}
    if mode == "projected_4096" and spec.startswith("zoo:"):
        out["relative_frobenius_error"] = relative_frobenius_error(k.backbone, entk(model, probe).backbone)
    return out


def child(spec: str, mode: str) -> dict[str, Any]:
    code = (f"import json, resource, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_ntk as b; "
            f"r = b.measure({spec!r}, {mode!r}); "
            "r['peak_rss_mib'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024; print(json.dumps(r))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode:
        return {"failed": done.stderr.strip().splitlines()[-1][:300]}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["zoo:llama", "smollm2-135m"])
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    result = {spec: {mode: child(spec, mode) for mode in MODES} for spec in args.models}
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
