"""The study at scale on SmolLM2-135M-Instruct: base + 3 perturbed copies read from disk.

    python benchmarks/study_scale.py --json benchmarks/results/study_scale.json

1. Peak memory: a study with 1 tuned model and one with 3, each in a fresh process (ru_maxrss of the
   whole process): models are loaded one at a time, so 3 tuned should cost about what 1 does.
2. Rerun: the 3-tuned study run again into its folder (fresh process): every generation and attribution
   comes from the folder's caches; its wall time against the first run's.
3. Generation: circuitdyn's greedy `generate` against transformers' `generate` on the same model folder (a
   plain AutoModelForCausalLM, the same left-padded batches), interleaved over rounds, at 1 thread and at
   the default; the tokens must be identical.

The tuned copies are the base with every weight moved by 0.01 x its tensor's std of seeded Gaussian noise.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

PROBLEMS = dict(levels=(0, 1), instruction="Answer with just the number.")


def prepare(root: Path) -> dict[str, str]:
    """The base and three perturbed copies, each saved as a Hugging Face folder."""
    from study_smollm2 import perturbed  # this folder is on sys.path when the script runs

    from circuitdyn.models import load_model
    from circuitdyn.models.export import save_hf_folder

    folders = {name: root / name for name in ("base", "t0", "t1", "t2")}
    if all((f / "config.json").is_file() for f in folders.values()):
        return {k: str(v) for k, v in folders.items()}
    base = load_model("smollm2-135m", device="cpu")
    save_hf_folder(base.bridge, base.tokenizer, folders["base"])
    for k in range(3):
        copy = perturbed(base, 10 + k, 0.01)
        save_hf_folder(copy.bridge, copy.tokenizer, folders[f"t{k}"])
        del copy
    return {k: str(v) for k, v in folders.items()}


def child(folders: dict[str, str], n_tuned: int, out: str, samples: int, max_new_tokens: int) -> dict[str, Any]:
    """One study in this (fresh) process: its wall time, peak RSS and cache use."""
    from circuitdyn.study import run_study
    from circuitdyn.tasks import WordProblems

    t0 = time.perf_counter()
    tuned = {f"t{k}": folders[f"t{k}"] for k in range(n_tuned)}
    result = run_study(folders["base"], tuned, WordProblems(**PROBLEMS), protocol="common", samples=samples,
                       max_new_tokens=max_new_tokens, min_kept=2, n_resamples=10_000, out=out, progress=False)
    return {"tuned": n_tuned, "wall_s": round(time.perf_counter() - t0, 2),
            "peak_rss_GB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30, 3),
            "cache": result.protocol["cache"], "seconds": result.protocol["seconds"], "kept": len(result.kept)}


def _run_child(folders: dict[str, str], n_tuned: int, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    spec = json.dumps([folders, n_tuned, str(out), args.samples, args.max_new_tokens])
    done = subprocess.run([sys.executable, __file__, "--child", spec], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[1])
    return json.loads(done.stdout.strip().splitlines()[-1])


def generation(folder: str, problems: int, max_new_tokens: int, rounds: int, threads: int) -> dict[str, Any]:
    """circuitdyn's generate / transformers' generate, interleaved, with identical tokens asserted."""
    from transformers import AutoModelForCausalLM

    from circuitdyn.models import load_model
    from circuitdyn.study.generation import encode_prompt, generate, pad_id
    from circuitdyn.tasks import WordProblems

    torch.set_num_threads(threads)
    ours = load_model(folder, device="cpu")
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    source = WordProblems(**PROBLEMS)
    items = source.problems(problems, seed=0)
    tok = ours.tokenizer
    prompts = sorted((encode_prompt(tok, p.question, chat_template=True) for p in items), key=lambda r: -len(r))
    pad = pad_id(tok)

    @torch.no_grad()
    def reference() -> list[list[int]]:
        answers = []
        for start in range(0, len(prompts), 16):
            rows = prompts[start:start + 16]
            width = max(map(len, rows))
            ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
            out = hf.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                              eos_token_id=tok.eos_token_id, pad_token_id=pad)[:, width:].tolist()
            answers += [r[:r.index(tok.eos_token_id)] if tok.eos_token_id in r else r for r in out]
        return answers

    def circuitdyn() -> list[Any]:
        return generate(ours, items, source, chat_template=True, max_new_tokens=max_new_tokens, batch_size=16)

    times: dict[str, list[float]] = {"circuitdyn": [], "transformers": []}
    outputs: dict[str, Any] = {}
    for r in range(rounds):  # who goes first alternates between rounds
        for name, run in (("circuitdyn", circuitdyn), ("transformers", reference))[::1 if r % 2 == 0 else -1]:
            t = time.perf_counter()
            outputs[name] = run()
            times[name].append(time.perf_counter() - t)
    gens, ref = outputs["circuitdyn"], outputs["transformers"]
    by_prompt = {g.prompt_ids: list(g.response_ids) for g in gens}
    identical = all(by_prompt[tuple(p)] == r for p, r in zip(prompts, ref))
    ratios = [a / b for a, b in zip(times["circuitdyn"], times["transformers"])]
    return {"threads": threads, "problems": problems, "max_new_tokens": max_new_tokens,
            "rounds": rounds, "identical_tokens": identical, "ratio_min": round(min(ratios), 3),
            "ratio_median": round(statistics.median(ratios), 3),
            "seconds": {k: [round(x, 2) for x in v] for k, v in times.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=24)
    ap.add_argument("--max-new-tokens", type=int, default=12)
    ap.add_argument("--gen-problems", type=int, default=16)
    ap.add_argument("--gen-tokens", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models", default=os.path.join(tempfile.gettempdir(), "circuitdyn-study-scale"))
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        folders, n_tuned, out, samples, max_new_tokens = json.loads(args.child)
        print(json.dumps(child(folders, n_tuned, out, samples, max_new_tokens)))
        return
    default_threads = torch.get_num_threads()
    folders = prepare(Path(args.models))
    with tempfile.TemporaryDirectory(prefix="circuitdyn-study-scale-") as tmp:
        one = _run_child(folders, 1, Path(tmp) / "one", args)
        three = _run_child(folders, 3, Path(tmp) / "three", args)
        rerun = _run_child(folders, 3, Path(tmp) / "three", args)
    results = {
        "study_1_tuned": one, "study_3_tuned": three, "rerun_3_tuned": rerun,
        "peak_3_over_1": round(three["peak_rss_GB"] / one["peak_rss_GB"], 3),
        "rerun_over_first": round(rerun["wall_s"] / three["wall_s"], 3),
        "generation": [generation(folders["base"], args.gen_problems, args.gen_tokens, args.rounds, threads)
                       for threads in (1, default_threads)],
    }
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
