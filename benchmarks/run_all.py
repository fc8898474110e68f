"""Run every benchmark and write one JSON summary (ratios measured in one run, plus the machine).

    python benchmarks/run_all.py [--quick] [--out benchmarks/results/summary.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_attribution
import bench_peers
import bench_shapes
import bench_train
import bench_train_real

PEERS = Path(__file__).resolve().parents[1] / ".venv-peers" / "bin" / "python"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/summary.json")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    attribution = bench_attribution.main(["--quick"] if args.quick else [])
    train = bench_train.main(["--steps", "10" if args.quick else "30", "--rounds", "1" if args.quick else "3"])
    train_real = bench_train_real.main(["--steps", "3" if args.quick else "6", "--rounds", "1" if args.quick else "3"])
    shapes = bench_shapes.main(["--rounds", "2" if args.quick else "5"] +
                               (["--shapes", "gpt2-16x64", "--threads", "default"] if args.quick else []))
    peers = bench_peers.main(["--rounds", "1" if args.quick else "3"]) if PEERS.exists() else \
        {"skipped": f"no {PEERS}: `make bench-peers` builds it and runs the peer comparison"}
    summary = {
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": sys.version.split()[0]},
        "ratios": {
            "eap_over_bare_passes": attribution["medium_gpt2"]["eap_over_bare"],
            "eap_ig_over_fwd_bwd": attribution["medium_gpt2"]["eap_ig_over_fwd_bwd"],
            "eap_ig_steps": attribution["medium_gpt2"]["eap_ig_steps"],
            "speedup_vs_transformer_lens": attribution["vs_transformer_lens"]["speedup"],
            "peak_mib_ours_vs_tl": [attribution["vs_transformer_lens"]["ours_peak_mib"],
                                    attribution["vs_transformer_lens"]["tl_peak_mib"]],
            "grpo_steps_per_s_ours_over_trl": train.get("ratio_steps_per_s"),
            "smollm2_grpo_lora_ours_over_trl": train_real["ours_lora/trl_lora"],
            "smollm2_grpo_lora_over_full": train_real["ours_lora/ours_full"],
            "smollm2_grpo_peak_rss_mib": train_real["peak_rss_mib"],
            "auto_circuit_over_ours": {k: v["auto_circuit_over_circuitdyn"] for k, v in peers.get("runs", {}).items()}
            or peers.get("skipped"),
        },
        "smollm2_135m_eap": attribution.get("smollm2_135m"),
        "shapes": shapes,
        "details": {"attribution": attribution, "train": train, "train_real": train_real, "peers": peers},
        "seconds": time.perf_counter() - t0,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary["ratios"], indent=1))
    print("| shape | threads | EAP head / bare | EAP layer / bare | EAP-IG(5) head / fwd+bwd: midpoint | right | "
          "trapezoid | EAP head, per-head q/k/v copies / bare | peak / estimate, median of fresh processes (EAP head, "
          "layer, EAP-IG(5) head: midpoint, trapezoid) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, row in shapes.items():
        if not isinstance(row, dict) or "layers" not in row:
            continue
        for key, value in row.items():
            if key.startswith("threads_"):
                r = value["ratios"]
                cells = [f"{r[k]['median']:.2f} (min {r[k]['min']:.2f})" if k in r else "-" for k in
                         ("eap_head_over_bare", "eap_layer_over_bare", "eap_ig5_head_over_fwd_bwd",
                          "eap_ig5_head_right_over_fwd_bwd", "eap_ig5_head_trapezoid_over_fwd_bwd",
                          "eap_head_split_over_bare")]
                mem = [row.get("memory", {}).get(kind, {}).get("peak_over_estimate")
                       for kind in ("head", "layer", "head-ig5", "head-ig5-trapezoid")]
                print(f"| {name} | {key[8:]} | " + " | ".join(cells) + " | "
                      + ", ".join("-" if m is None else f"{m:.2f}" for m in mem) + " |")
    print(f"wrote {out}")
    return summary


if __name__ == "__main__":
    main()
