"""EAP against the physical limit at realistic shapes: time / (corrupt forward + clean forward + backward).

For each shape the contenders (bare passes, EAP head-level, EAP layer-level, EAP-IG(5) over inputs with the
midpoint, right (hannamw/EAP-IG's points) and trapezoid rules, one bare fwd+bwd, and head-level EAP reading
q/k/v at the bridge's per-head copies) run interleaved over several
rounds in one process, at 1 thread and at the default thread count; min and median of each ratio are
reported (this machine is noisy: compare ratios, never seconds).

Shapes: a 16-layer GPT-2 shape (d_model 256, 8 heads) at 64 tokens (`gpt2-16x64`: clean and corrupt differ
in the last token; `gpt2-16x64-mid`: from the middle on), a 6-layer one at 256 tokens, and SmolLM2-135M
(30 layers, GQA) on 32 IOI prompts when installed (`circuitdyn install-real`). Head-level EAP under zero
ablation is timed against one bare fwd+bwd (it needs no corrupt forward).

    python benchmarks/bench_shapes.py [--rounds 5] [--json out.json] [--shapes gpt2-16x64,smollm2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from circuitdyn.attribution import attribute
from circuitdyn.graph import Graph
from circuitdyn.models import LoadedModel, load_model
from circuitdyn.models.files import cache_root, save_model_folder
from circuitdyn.models.zoo import char_tokenizer
from circuitdyn.tasks import IOI, TaskExample, tokenize_pairs

try:  # run as a script or as a module of the benchmarks package
    from bench_attribution import bare_passes
except ImportError:
    from benchmarks.bench_attribution import bare_passes

DIGITS = "0123456789"


def gpt2_shape(layers: int, d_model: int, heads: int, n_ctx: int) -> LoadedModel:
    """A random-weight GPT-2-shaped model with the char tokenizer (cached)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = cache_root() / "bench" / f"gpt2-{layers}l-{d_model}d-{n_ctx}"
    if not (folder / "config.json").exists():
        tok = char_tokenizer()
        torch.manual_seed(0)
        cfg = GPT2Config(vocab_size=len(tok), n_embd=d_model, n_layer=layers, n_head=heads, n_positions=n_ctx,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        save_model_folder(GPT2LMHeadModel(cfg), tok, folder)
    return load_model(str(folder), device="cpu")


def digit_pairs(n: int, tokens: int, seed: int = 0, *, differ_from: int | None = None) -> list[TaskExample]:
    """Clean/corrupt digit strings of `tokens` characters (one token each) differing in their last digit, and
    with `differ_from`, in every digit from that position on (the corrupt suffix drawn afresh)."""
    gen = torch.Generator().manual_seed(seed)
    draw = lambda k: "".join(DIGITS[int(i)] for i in torch.randint(0, 10, (k,), generator=gen))
    out = []
    for _ in range(n):
        body = draw(tokens - 1)
        a, b = (int(x) for x in torch.randperm(10, generator=gen)[:2])
        corrupt = body if differ_from is None else body[:differ_from] + draw(tokens - 1 - differ_from)
        out.append(TaskExample(body + DIGITS[a], corrupt + DIGITS[b], DIGITS[a], DIGITS[b]))
    return out


def shapes(names: list[str]) -> dict[str, tuple[LoadedModel, Any]]:
    out: dict[str, tuple[LoadedModel, Any]] = {}
    for name in names:
        if name == "gpt2-16x64":
            m = gpt2_shape(16, 256, 8, 64)
            out[name] = (m, tokenize_pairs(m.tokenizer, digit_pairs(32, 64)))
        elif name == "gpt2-16x64-mid":  # the same, the corrupt prompts differing from the middle on
            m = gpt2_shape(16, 256, 8, 64)
            out[name] = (m, tokenize_pairs(m.tokenizer, digit_pairs(32, 64, differ_from=32)))
        elif name == "gpt2-6x256":
            m = gpt2_shape(6, 256, 8, 256)
            out[name] = (m, tokenize_pairs(m.tokenizer, digit_pairs(16, 256)))
        elif name == "smollm2":
            try:
                m = load_model("smollm2-135m", device="cpu")
            except Exception as err:  # the real models are optional
                print(f"smollm2 skipped: {str(err).splitlines()[0]}")
                continue
            out[name] = (m, tokenize_pairs(m.tokenizer, IOI().examples(32, seed=0), require_single_token_answers=True))
        else:
            raise SystemExit(f"unknown shape {name!r}")
    return out


def contenders(model: LoadedModel, data: Any) -> dict[str, Callable[[], Any]]:
    head, layer = Graph.from_model(model, "head"), Graph.from_model(model, "layer")
    big = 1 << 40  # no chunking: the ratio is against one pass over the whole batch
    return {
        "bare": bare_passes(model, data),
        "fwd_bwd": bare_passes(model, data, corrupt_forward=False),
        "eap_head": lambda: attribute(model, head, data, "logit_diff", batch_size=len(data), memory_budget=big),
        "eap_layer": lambda: attribute(model, layer, data, "logit_diff", batch_size=len(data), memory_budget=big),
        "eap_ig5_head": lambda: attribute(model, head, data, "logit_diff", method="eap-ig-inputs", steps=5,
                                          batch_size=len(data), memory_budget=big),
        # the same 5 gradient evaluations, placed so that the path's ends reuse the recording forwards
        "eap_ig5_head_right": lambda: attribute(model, head, data, "logit_diff", method="eap-ig-inputs", steps=5,
                                                quadrature="right", batch_size=len(data), memory_budget=big),
        "eap_ig5_head_trapezoid": lambda: attribute(model, head, data, "logit_diff", method="eap-ig-inputs", steps=5,
                                                    quadrature="trapezoid", batch_size=len(data), memory_budget=big),
        # zero ablation: no corrupt forward, so its floor is one bare fwd+bwd
        "eap_head_zero": lambda: attribute(model, head, data, "logit_diff", ablation="zero", batch_size=len(data),
                                           memory_budget=big),
        # the per-head residual copies the projected q/k/v gradients replace (destinations.py)
        "eap_head_split": lambda: attribute(model, head, data, "logit_diff", batch_size=len(data), memory_budget=big,
                                            qkv_gradients="split"),
    }


def measure(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[float]]:
    """Seconds of every contender, interleaved: round r runs each once, in a rotated order."""
    names = list(fns)
    for name in names:  # warm-up
        fns[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def ratios(times: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    out = {}
    for name, base in (("eap_head", "bare"), ("eap_layer", "bare"), ("eap_ig5_head", "fwd_bwd"),
                       ("eap_ig5_head_right", "fwd_bwd"), ("eap_ig5_head_trapezoid", "fwd_bwd"),
                       ("eap_head_zero", "fwd_bwd"), ("eap_head_split", "bare")):
        per_round = [a / b for a, b in zip(times[name], times[base])]
        out[f"{name}_over_{base}"] = {"min": min(per_round), "median": statistics.median(per_round)}
    return out


#: the attributions whose memory is measured: EAP at head and layer level, EAP-IG(5) over inputs at head level
#: (midpoint and trapezoid rules)
MEMORY_KINDS = {"head": ("head", "eap", "midpoint"), "layer": ("layer", "eap", "midpoint"),
                "head-ig5": ("head", "eap-ig-inputs", "midpoint"),
                "head-ig5-trapezoid": ("head", "eap-ig-inputs", "trapezoid")}  # the path's ends are gradient passes


def memory_child(shape: str, kind: str) -> None:
    """In a fresh process: the peak resident memory of one attribution above the level before it, and the
    engine's estimate of it (provenance["peak_bytes_estimate"])."""
    try:
        from bench_attribution import peak_rss_increment
    except ImportError:
        from benchmarks.bench_attribution import peak_rss_increment
    model, data = shapes([shape])[shape]
    granularity, method, rule = MEMORY_KINDS[kind]
    graph = Graph.from_model(model, granularity)
    holder: dict[str, Any] = {}
    mib = peak_rss_increment(lambda: holder.setdefault("a", attribute(model, graph, data, "logit_diff", method=method,
                                                                      steps=5, quadrature=rule, batch_size=len(data))))
    print(json.dumps({"peak_mib": mib, "estimate_mib": holder["a"].provenance["peak_bytes_estimate"] / 2**20}))


def memory(shape: str, kind: str, repeats: int) -> dict[str, Any]:
    """Peak / estimate over `repeats` fresh processes: the peak moves by up to ~30% from one process to the
    next (where the allocator happens to place and release its blocks), so one process proves little."""
    import subprocess
    import sys

    rows = [json.loads(subprocess.run([sys.executable, __file__, "--memory-child", f"{shape}:{kind}"],
                                      capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
            for _ in range(repeats)]
    peaks = [row["peak_mib"] for row in rows]
    estimate = rows[0]["estimate_mib"]
    return {"peak_mib": statistics.median(peaks), "estimate_mib": estimate,
            "peak_over_estimate": statistics.median(peaks) / estimate,
            "peak_over_estimate_range": [min(peaks) / estimate, max(peaks) / estimate], "repeats": repeats}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--shapes", default="gpt2-16x64,gpt2-6x256,smollm2")
    parser.add_argument("--threads", default="1,default")
    parser.add_argument("--json", default=None)
    parser.add_argument("--memory-repeats", type=int, default=3, help="fresh processes per memory measurement (0: none)")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        memory_child(*args.memory_child.split(":"))
        return {}
    default_threads = torch.get_num_threads()
    results: dict[str, Any] = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                                           "torch": torch.__version__, "default_threads": default_threads}}
    for name, (model, data) in shapes(args.shapes.split(",")).items():
        fns = contenders(model, data)
        row: dict[str, Any] = {"examples": len(data), "tokens": int(data.clean.shape[1]),
                               "layers": int(model.cfg.n_layers)}
        for threads in args.threads.split(","):
            n = default_threads if threads == "default" else int(threads)
            torch.set_num_threads(n)
            times = measure(fns, args.rounds)
            row[f"threads_{n}"] = {"ratios": ratios(times),
                                   "bare_seconds_median": statistics.median(times["bare"])}
            print(name, n, json.dumps(row[f"threads_{n}"]["ratios"]), flush=True)
        torch.set_num_threads(default_threads)
        if args.memory_repeats:
            row["memory"] = {kind: memory(name, kind, args.memory_repeats) for kind in MEMORY_KINDS}
            print(name, "memory", json.dumps(row["memory"]), flush=True)
        results[name] = row
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
