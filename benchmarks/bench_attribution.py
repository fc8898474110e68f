"""Attribution speed: ratios measured in one run (this machine is noisy; compare ratios, not seconds).

  EAP / bare passes      EAP time over (corrupt forward + clean forward + backward to the input), the least
                         work any EAP needs; goal <= 2.0
  vs transformer_lens    transformer_lens 4.3 attribution_patch(granularity="edge") time over ours on the
                         same prompts and metric; goal >= 10; and the two peak-memory increments
  EAP-IG(m) / fwd+bwd    goal <= m + 1.5
  SmolLM2-135M           head-level EAP on 32 IOI prompts: wall time and peak memory (when installed)

    python benchmarks/bench_attribution.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import psutil
import torch

from circuitdyn.attribution import attribute
from circuitdyn.attribution.engine import frozen_parameters
from circuitdyn.graph import Graph
from circuitdyn.models import LoadedModel, load_model
from circuitdyn.models.files import cache_root, save_model_folder
from circuitdyn.models.zoo import char_tokenizer
from circuitdyn.tasks import IOI, Addition, tokenize_pairs


def timed(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _high_water_kib() -> int:
    """The kernel's peak resident memory of this process (VmHWM), in KiB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def _reset_high_water() -> bool:
    """Reset VmHWM to the current level; False where Linux's /proc/self/clear_refs is not available."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _high_water_kib() > 0
    except (OSError, StopIteration, ValueError):
        return False


def peak_rss_increment(fn: Callable[[], Any]) -> float:
    """Peak resident memory above the level before the call, in MiB: the kernel's high-water mark where
    Linux exposes it (exact), else sampled every 2 ms (a loaded machine can miss short peaks)."""
    proc = psutil.Process()
    base = proc.memory_info().rss
    if _reset_high_water():
        fn()
        return (_high_water_kib() * 1024 - base) / 2**20
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.002)

    thread = threading.Thread(target=sample)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    return (peak[0] - base) / 2**20


def medium_gpt2() -> LoadedModel:
    """A random-weight GPT-2-shaped model (6 layers, d_model 256, 8 heads) with the char tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = cache_root() / "bench" / "gpt2-6l-256d"
    if not (folder / "config.json").exists():
        tok = char_tokenizer()
        torch.manual_seed(0)
        cfg = GPT2Config(vocab_size=len(tok), n_embd=256, n_layer=6, n_head=8, n_positions=64,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        save_model_folder(GPT2LMHeadModel(cfg), tok, folder)
    return load_model(str(folder), device="cpu")


def bare_passes(model: LoadedModel, data: Any, corrupt_forward: bool = True) -> Callable[[], None]:
    bridge = model.bridge

    def run() -> None:
        with frozen_parameters(bridge):
            if corrupt_forward:
                with torch.no_grad():
                    bridge(data.corrupt, attention_mask=data.mask.long())
            store = {}

            def leaf(x: torch.Tensor, hook: Any) -> torch.Tensor:
                store["x"] = x.detach().requires_grad_(True)
                return store["x"]
            with bridge.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", leaf)]):
                logits = bridge(data.clean, attention_mask=data.mask.long())
            rows = torch.arange(len(data))
            at = logits[rows, data.answer_pos]
            metric = (at[rows, data.answers[:, 0]] - at[rows, data.foils]).sum()
            torch.autograd.grad(metric, store["x"])
    return run


def tl_edge_attribution(model: LoadedModel, data: Any) -> Callable[[], None]:
    from transformer_lens.tools.analysis.attribution_patching import EdgeAttributionConfig, attribution_patch

    a, f, p = int(data.answers[0, 0]), int(data.foils[0]), int(data.answer_pos[0])
    config = EdgeAttributionConfig(granularity="edge")

    def run() -> None:  # TL takes one metric for the batch: every prompt here shares answer position
        attribution_patch(model.bridge, data.clean, data.corrupt, lambda lg: lg[0, p, a] - lg[0, p, f], config)
    return run


def child_peak_mib(kind: str, examples: int) -> float:
    """Peak memory of one attribution run in a fresh process (a warm allocator would hide it)."""
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--examples", str(examples)],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def run_child(kind: str, examples: int) -> None:
    model = medium_gpt2()
    data = tokenize_pairs(model.tokenizer, Addition().examples(examples, seed=0))
    graph = Graph.from_model(model, "head")
    if kind == "tl":
        fn = tl_edge_attribution(model, data)
    else:
        def fn() -> None:
            attribute(model, graph, data, "logit_diff", ablation="denoising", aggregation="sum")
    print(peak_rss_increment(fn))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", choices=["tl", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--examples", type=int, default=8, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run_child(args.child, args.examples)
        return {}
    repeats = 2 if args.quick else 5
    results: dict[str, Any] = {
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "torch": torch.__version__},
    }
    model = medium_gpt2()
    n = 8 if args.quick else 32
    data = tokenize_pairs(model.tokenizer, Addition().examples(n, seed=0))
    graph = Graph.from_model(model, "head")
    t_bare = timed(bare_passes(model, data), repeats)
    t_fwd_bwd = timed(bare_passes(model, data, corrupt_forward=False), repeats)
    t_eap = timed(lambda: attribute(model, graph, data, "logit_diff"), repeats)
    steps = 5
    t_ig = timed(lambda: attribute(model, graph, data, "logit_diff", method="eap-ig-inputs", steps=steps), repeats)
    results["medium_gpt2"] = {
        "shape": "GPT-2, 6 layers, d_model 256, 8 heads (random weights)", "examples": n,
        "edges": graph.n_edges, "bare_seconds": t_bare, "eap_seconds": t_eap,
        "eap_over_bare": t_eap / t_bare, "eap_ig_steps": steps, "fwd_bwd_seconds": t_fwd_bwd,
        "eap_ig_over_fwd_bwd": t_ig / t_fwd_bwd,
    }
    # transformer_lens runs one prompt at a time: compare on a small batch
    k = 4 if args.quick else 8
    small = data[0:k]
    t_tl = timed(tl_edge_attribution(model, small), 1)
    t_ours = timed(lambda: attribute(model, graph, small, "logit_diff", ablation="denoising", aggregation="sum"), repeats)
    mem_tl = child_peak_mib("tl", k)
    mem_ours = child_peak_mib("ours", k)
    results["vs_transformer_lens"] = {
        "examples": k, "tl_seconds": t_tl, "ours_seconds": t_ours, "speedup": t_tl / t_ours,
        "tl_peak_mib": mem_tl, "ours_peak_mib": mem_ours, "peak_memory_note": "fresh process each",
    }
    try:
        smol = load_model("smollm2-135m", device="cpu")
    except Exception as err:  # the `real` extra is optional
        results["smollm2_135m"] = {"skipped": str(err).splitlines()[0]}
    else:
        ioi = tokenize_pairs(smol.tokenizer, IOI().examples(32, seed=0), require_single_token_answers=True)
        g = Graph.from_model(smol, "head")
        holder: dict[str, float] = {}

        def run_smol() -> None:
            t0 = time.perf_counter()
            attribute(smol, g, ioi, "logit_diff", batch_size=8)
            holder["seconds"] = time.perf_counter() - t0
        mib = peak_rss_increment(run_smol)
        results["smollm2_135m"] = {"prompts": 32, "edges": g.n_edges, "seconds": holder["seconds"], "peak_mib": mib}
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
