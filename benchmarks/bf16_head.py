"""Head-level EAP on a bf16 model at 512 tokens: time / the bare passes (corrupt forward + clean forward +
backward), against the same in float32.

SmolLM2-135M (`circuitdyn install-real`), 2 prompts of 512 tokens (ids drawn at random; the corrupt prompt
differs from the middle on), logit_diff, noising, one chunk. Both contenders run the model's attention
through scaled-dot-product attention. Contenders are interleaved over rounds in one process (who goes
first rotates, as in bench_shapes; the recorded run alternated them), at 1 thread and at the default thread
count; min and median of the per-round ratios are reported (this machine is noisy: compare ratios, never
seconds). Scores stay float32 in both dtypes.

    python benchmarks/bf16_head.py [--rounds 5] [--json benchmarks/results/bf16_head.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections.abc import Callable
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from circuitdyn.attribution import attribute
from circuitdyn.graph import Graph
from circuitdyn.models import LoadedModel, load_model
from circuitdyn.models.attention import efficient_attention
from circuitdyn.tasks.base import PairBatch

try:  # run as a script or as a module of the benchmarks package
    from bench_attribution import bare_passes
    from bench_shapes import measure
except ImportError:
    from benchmarks.bench_attribution import bare_passes
    from benchmarks.bench_shapes import measure

TOKENS, PROMPTS = 512, 2


def random_pairs(model: LoadedModel, n: int, tokens: int, seed: int = 0) -> PairBatch:
    """n prompts of random ids, the corrupt one redrawn from the middle on; answer and foil at the end."""
    gen = torch.Generator().manual_seed(seed)
    vocab = min(len(model.tokenizer), 20000)
    clean = torch.randint(100, vocab, (n, tokens), generator=gen)
    corrupt = clean.clone()
    corrupt[:, tokens // 2:] = torch.randint(100, vocab, (n, tokens - tokens // 2), generator=gen)
    return PairBatch(clean=clean, corrupt=corrupt, mask=torch.ones(n, tokens, dtype=torch.bool),
                     answer_pos=torch.full((n,), tokens - 1), answers=torch.randint(100, vocab, (n, 1), generator=gen),
                     foils=torch.randint(100, vocab, (n,), generator=gen))


def contenders(model: LoadedModel, data: PairBatch) -> dict[str, Callable[[], Any]]:
    head, layer = Graph.from_model(model, "head"), Graph.from_model(model, "layer")
    big = 1 << 40  # one chunk: the ratio is against one pass over the whole batch
    bare = bare_passes(model, data)

    def bare_sdpa() -> None:
        with efficient_attention(model):
            bare()
    return {
        "bare": bare_sdpa,
        "eap_head": lambda: attribute(model, head, data, "logit_diff", batch_size=len(data), memory_budget=big),
        "eap_layer": lambda: attribute(model, layer, data, "logit_diff", batch_size=len(data), memory_budget=big),
    }


def ratios(times: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    out = {}
    for name in ("eap_head", "eap_layer"):
        r = [t / b for t, b in zip(times[name], times["bare"])]
        out[f"{name}/bare"] = {"median": round(statistics.median(r), 3), "min": round(min(r), 3)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    default_threads = torch.get_num_threads()
    result: dict[str, Any] = {"torch": torch.__version__, "tokens": TOKENS, "prompts": PROMPTS, "rounds": args.rounds}
    for dtype in (torch.bfloat16, torch.float32):
        model = load_model("smollm2-135m", device="cpu", dtype=dtype)
        data = random_pairs(model, PROMPTS, TOKENS)
        fns = contenders(model, data)
        for threads in sorted({1, default_threads}):
            torch.set_num_threads(threads)
            times = measure(fns, args.rounds)
            row = {"ratios": ratios(times), "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()}}
            result[f"{str(dtype).replace('torch.', '')}_threads_{threads}"] = row
            print(str(dtype), threads, json.dumps(row["ratios"]), flush=True)
        torch.set_num_threads(default_threads)
        del model, fns
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
