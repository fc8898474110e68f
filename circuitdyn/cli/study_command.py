"""`circuitdyn study`: the RL-circuitry paper's protocol on a base and tuned models, or on one of the paper's
pairs by name.

    circuitdyn study --base zoo:llama --tuned grpo=runs/grpo/final --task addition --samples 100 --out runs/study
    circuitdyn study --paper-pair deepseek-math --model-dir /models --task math:MATH.jsonl --out runs/deepseek
    circuitdyn study --paper-pair distill-qwen --model-dir /models --task math:MATH.jsonl --dry-run
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from circuitdyn.cli.inputs import HelpFormatter, out_path, parse_tuned
from circuitdyn.cli.options import add_config_options, config_kwargs
from circuitdyn.study.config import StudyConfig
from circuitdyn.study.paper_pairs import PAPER_PAIRS, paper_pair


def cmd_study(args: argparse.Namespace) -> int:
    from circuitdyn.study import run_study

    base, tuned, given = args.base, parse_tuned(args.tuned or []), config_kwargs(args, StudyConfig)
    if args.paper_pair:  # the pair's models and settings, where the command line does not say otherwise
        pair = paper_pair(args.paper_pair).study_kwargs()
        base, tuned = base or pair.pop("base"), tuned or pair.pop("tuned")
        given = {**{k: v for k, v in pair.items() if k not in ("base", "tuned")}, **given}
    if not base or not tuned:
        raise ValueError("give --base and --tuned LABEL=MODEL, or --paper-pair NAME")
    config = StudyConfig(**given)
    if args.dry_run:
        from circuitdyn.study.plan import study_plan

        print(study_plan(base, tuned, args.task, config))
        return 0
    if not args.out:
        raise ValueError("give --out FOLDER for the study's tables, caches and plots (or --dry-run for the plan)")
    out = Path(args.out)  # run_study refuses a folder it cannot write before any work
    result = run_study(base, tuned, args.task, config=config, out=out, replace=args.replace, fresh=args.fresh,
                       generations=parse_tuned(args.generations, "--generations", "LABEL=FILE"))
    print((out / "report.md").read_text())
    scored = ", ".join(f"{label} {len(s.rows)} of {s.n_rows}" for label, s in result.selections.items())
    print(f"rows scored per pair: {scored}; wrote {out}" if scored else
          f"kept {len(result.kept)} of {result.n_generated}; wrote {out}")
    return 0


def add_study_command(sub: Any) -> None:
    s = sub.add_parser("study", help="the RL-circuitry paper's protocol: own generations, both-correct filter, "
                       "zero-ablation EAP of the mean NLL of each response's first tokens, paired tests",
                       formatter_class=HelpFormatter)
    s.add_argument("--base", help="base model spec (or from --paper-pair)")
    s.add_argument("--tuned", action="append", metavar="LABEL=MODEL",
                   help="a tuned model (spec, folder or circuitdyn checkpoint of the base); repeat a label for seeds")
    s.add_argument("--paper-pair", choices=sorted(PAPER_PAIRS),
                   help="one of the paper's pairs: fills --base, --tuned, --template and --max-new-tokens (the "
                        "models are hub ids: use --model-dir for local copies)")
    s.add_argument("--generations", action="append", default=[], metavar="LABEL=FILE",
                   help="read a pair's generations (the paper's all_correct.jsonl rows) instead of generating; one "
                        "file per seed of the label")
    s.add_argument("--task", default="word_problems",
                   help="word_problems, gsm8k:FILE.jsonl, math:FILE.jsonl, or a task (addition, ...)")
    s.add_argument("--out", type=out_path, help="output folder (needed unless --dry-run)")
    s.add_argument("--replace", action="store_true", help="replace a study of other labels the output folder holds")
    s.add_argument("--fresh", action="store_true", help="recompute every cached generation and attribution (a "
                                                        "rerun into the same folder otherwise reuses them)")
    s.add_argument("--dry-run", action="store_true", help="print the plan (models, device, dtype, weights, tokens to "
                                                          "generate, attribution memory per example) and stop")
    add_config_options(s, StudyConfig)
    s.set_defaults(fn=cmd_study)
