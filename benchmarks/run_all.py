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
import bench_train


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/summary.json")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    attribution = bench_attribution.main(["--quick"] if args.quick else [])
    train = bench_train.main(["--steps", "10" if args.quick else "60"])
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
        },
        "smollm2_135m_eap": attribution.get("smollm2_135m"),
        "details": {"attribution": attribution, "train": train},
        "seconds": time.perf_counter() - t0,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary["ratios"], indent=1))
    print(f"wrote {out}")
    return summary


if __name__ == "__main__":
    main()
