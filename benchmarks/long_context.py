"""Attribution at the paper's lengths: peak memory against the estimate, at 7B shapes, without a GPU.

`--run-7b`: a random-weight model built from Qwen2.5-7B's configuration (the shape of R1-Distill-Qwen-7B,
AceReason-Nemotron-7B and Qwen2.5-7B-SFT/DPO) in bf16 (~15 GB) on this CPU, one 512-token example, layer graph,
zero ablation, the default configuration: it runs, and its peak RSS above the loaded model is compared with the
estimate attribute() budgets (`peak_bytes_estimate`). Needs ~21 GB of RAM and a few minutes.

`--table`: the memory each of the paper's pairs needs on an 80 GB GPU, batch 1, layer and head graph, at the
lengths its protocol scores (prompt + cut_coeff x mean answer length; cut_coeff up to 0.5 of answers up to
4,096 / 8,192 / 32,768 new tokens), every activation kept and recomputed block by block (what attribute()
switches to when one example does not fit). What autograd keeps is measured (the same probe attribute() runs) on each
shape cut to one and two blocks at two lengths, and extended linearly in blocks and tokens (with scaled-dot-
product attention nothing kept grows faster than the tokens); the buffers and gradients are computed exactly.

    python benchmarks/long_context.py --table [--json out.json]
    python benchmarks/long_context.py --run-7b [--tokens 512]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import tempfile
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import psutil
import torch

from circuitdyn.attribution import attribute, estimate
from circuitdyn.attribution.engine import buffer_bytes, gradient_bytes, peak_estimate
from circuitdyn.graph import Graph
from circuitdyn.graph.nodes import GraphSpec
from circuitdyn.models.zoo import char_tokenizer
from circuitdyn.tasks.base import PairBatch

GB = 2**30
#: the pairs' shapes, from their Hugging Face configurations
SHAPES: dict[str, dict[str, Any]] = {
    "qwen2.5-7b": dict(kind="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, vocab_size=152064, rope_theta=1e6),
    "deepseek-math-7b": dict(kind="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=30,
                             num_attention_heads=32, num_key_value_heads=32, vocab_size=102400),
    "mistral-7b": dict(kind="mistral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, vocab_size=32000),
}
#: pair -> (shape, the longest scored length: prompt ~200 + 0.5 x the generation limit, and a typical one)
PAIRS = {
    "DeepSeek-Math 7B instruct -> RL (GRPO)": ("deepseek-math-7b", (1024, 2048)),
    "Mistral-7B SFT -> Math-Shepherd RL (PPO)": ("mistral-7b", (1024, 2048)),
    "Qwen2.5-7B SFT -> DPO (iterative DPO)": ("qwen2.5-7b", (1024, 4096)),
    "R1-Distill-Qwen-7B -> AceReason-Nemotron-7B (GRPO)": ("qwen2.5-7b", (4096, 16384)),
}


def random_bridge(shape: str, layers: int | None = None, dtype: torch.dtype = torch.bfloat16) -> Any:
    """A random-weight bridge of `shape` (optionally cut to `layers` blocks), built without a float32 copy."""
    import transformers as tf
    from transformer_lens.model_bridge import TransformerBridge

    spec = dict(SHAPES[shape])
    kind = spec.pop("kind")
    if layers is not None:
        spec["num_hidden_layers"] = layers
    config_class = {"qwen2": tf.Qwen2Config, "llama": tf.LlamaConfig, "mistral": tf.MistralConfig}[kind]
    config = config_class(**spec, max_position_embeddings=32768, tie_word_embeddings=False)
    with torch.device("meta"):
        model = tf.AutoModelForCausalLM.from_config(config, dtype=dtype)
    model = model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.fill_(1.0) if "norm" in name else p.normal_(0.0, 0.02, generator=generator)
        model.model.rotary_emb.__init__(config)  # its inverse frequencies, which to_empty left uninitialised
    model.eval()
    folder = tempfile.mkdtemp(prefix=f"circuitdyn-{shape}-")
    config.save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)  # ids are drawn, never tokenized: any tokenizer does
    bridge = TransformerBridge.boot_transformers(folder, hf_model=model, dtype=dtype, device="cpu")
    bridge.eval()
    return bridge


def one_example(tokens: int, vocab: int) -> PairBatch:
    ids = torch.randint(100, vocab - 1, (1, tokens), generator=torch.Generator().manual_seed(1))
    return PairBatch(ids, ids.clone(), torch.ones(1, tokens, dtype=torch.bool), torch.tensor([tokens - 1]),
                     torch.tensor([[7]]), torch.tensor([8]))


def kept_bytes(bridge: Any, granularity: str, tokens: int) -> int:
    return estimate.kept_bytes(bridge, granularity, tokens)[0]


def table() -> list[dict[str, Any]]:
    """Per pair, length and graph: the estimate of one example, and weights + estimate against 80 GB."""
    rows = []
    for shape in sorted({s for s, _ in PAIRS.values()}):
        full = SHAPES[shape]
        kept: dict[tuple[str, int, int], int] = {}
        for n in (1, 2):
            bridge = random_bridge(shape, n)
            kept.update({(g, n, t): kept_bytes(bridge, g, t) for g in ("layer", "head") for t in (64, 128)})
            del bridge
        fits = {}
        for g in ("layer", "head"):
            per_block_token = (kept[g, 2, 128] - kept[g, 1, 128] - kept[g, 2, 64] + kept[g, 1, 64]) / 64
            fixed_token = (kept[g, 1, 128] - kept[g, 1, 64]) / 64 - per_block_token
            fits[g] = (per_block_token, fixed_token)
        for pair, (s, lengths) in PAIRS.items():
            if s != shape:
                continue
            n_params = _params(full)
            graph_of = {g: _graph(shape, g) for g in ("layer", "head")}
            for tokens in lengths:
                row: dict[str, Any] = {"pair": pair, "shape": shape, "tokens": tokens,
                                       "weights_GB": round(n_params * 2 / GB, 1)}
                for granularity, (per_block, fixed) in fits.items():
                    activations = int((per_block * full["num_hidden_layers"] + fixed) * tokens)
                    est = peak_estimate(graph_of[granularity], 1, tokens, 1.0, activations)
                    row[f"{granularity}_GB"] = round(est / GB, 1)
                    row[f"{granularity}_fits_80GB"] = bool(n_params * 2 + est < 80 * GB)
                    # recomputed block by block: the blocks' inputs (bf16) and one block's own activations kept
                    kept = int((per_block + fixed) * tokens) + full["num_hidden_layers"] * tokens * full["hidden_size"] * 2
                    recomputed = peak_estimate(graph_of[granularity], 1, tokens, 1.0, kept)
                    row[f"{granularity}_recomputed_GB"] = round(recomputed / GB, 1)
                    row[f"{granularity}_recomputed_fits_80GB"] = bool(n_params * 2 + recomputed < 80 * GB)
                    row[f"{granularity}_deltas_GB"] = round(buffer_bytes(graph_of[granularity], 1, tokens) / GB, 1)
                    row[f"{granularity}_grads_GB"] = round(gradient_bytes(graph_of[granularity], 1, tokens) / GB, 2)
                rows.append(row)
    return rows


def _params(spec: dict[str, Any]) -> int:
    d, f, n, v = spec["hidden_size"], spec["intermediate_size"], spec["num_hidden_layers"], spec["vocab_size"]
    kv = d * spec["num_key_value_heads"] // spec["num_attention_heads"]
    return n * (2 * d * d + 2 * d * kv + 3 * d * f + 2 * d) + 2 * v * d + d


def _graph(shape: str, granularity: str) -> Graph:
    """The full-depth graph from its spec alone (the buffers and gradients need only its shape)."""
    spec = SHAPES[shape]
    return Graph(GraphSpec(n_layers=spec["num_hidden_layers"], n_heads=spec["num_attention_heads"],
                           n_kv_heads=spec["num_key_value_heads"], d_model=spec["hidden_size"],
                           parallel_attn_mlp=False, post_attn_norm=False, granularity=granularity))


def run_7b(tokens: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    bridge = random_bridge("qwen2.5-7b")
    built = time.perf_counter() - t0
    gc.collect()
    reset = _reset_peak()  # the attribution's own peak, not the build's
    before = psutil.Process().memory_info().rss
    t1 = time.perf_counter()
    result = attribute(bridge, "layer", one_example(tokens, bridge.cfg.d_vocab), "answer_nll", ablation="zero")
    peak = _peak_rss() if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    estimate = int(result.provenance["peak_bytes_estimate"])
    return {"shape": "qwen2.5-7b", "dtype": "bfloat16", "tokens": tokens, "graph": "layer", "ablation": "zero",
            "build_s": round(built, 1), "attribute_s": round(time.perf_counter() - t1, 1),
            "rss_loaded_GB": round(before / GB, 2), "rss_peak_GB": round(peak / GB, 2),
            "above_loaded_GB": round((peak - before) / GB, 2), "estimate_GB": round(estimate / GB, 2),
            "measured_over_estimate": round((peak - before) / estimate, 3),
            "peak": "VmHWM reset before the call" if reset else "ru_maxrss (includes the build)",
            "recompute": result.provenance["recompute"],
            "attention_calls": result.provenance["attention_calls"], "budget": result.provenance["memory_budget"],
            "scores_finite": bool(torch.isfinite(result.scores).all())}


def _reset_peak() -> bool:
    """Reset this process's peak resident set (Linux: /proc/self/clear_refs), so that VmHWM is the peak since."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _peak_rss() > 0
    except OSError:
        return False


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-7b", action="store_true")
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--table", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    out: dict[str, Any] = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    if args.run_7b:
        out["run_7b"] = run_7b(args.tokens)
        print(json.dumps(out["run_7b"], indent=1))
    if args.table:
        out["table"] = table()
        for row in out["table"]:
            print(json.dumps(row))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
