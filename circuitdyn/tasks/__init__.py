"""Built-in tasks and the task protocol."""

from collections.abc import Callable

from circuitdyn.tasks.addition import Addition
from circuitdyn.tasks.base import PairBatch, Split, Task, TaskError, TaskExample, distinct_examples, tokenize_pairs
from circuitdyn.tasks.greater_than import GreaterThan
from circuitdyn.tasks.ioi import IOI
from circuitdyn.tasks.math_files import MathFile, load_gsm8k, load_math
from circuitdyn.tasks.problems import (
    Problem,
    ProblemSet,
    TaskProblems,
    answers_match,
    final_answer,
    normalize_answer,
    problems_sha256,
)
from circuitdyn.tasks.qa_addition import QAAddition, qa_addition_160
from circuitdyn.tasks.user_data import UserTask, from_jsonl, from_records
from circuitdyn.tasks.word_problems import WordProblems

TASKS: dict[str, Callable[[], Task]] = {"addition": Addition, "ioi": IOI, "greater_than": GreaterThan,
                                        "qa_addition": QAAddition, "qa_addition_160": qa_addition_160}


def get_task(name: str) -> Task:
    """A built-in task by name, or a user task from a `.jsonl` path."""
    if name.endswith(".jsonl"):
        return from_jsonl(name)
    if name not in TASKS:
        raise TaskError(f"unknown task {name!r}; choose one of {sorted(TASKS)} or give a .jsonl file")
    return TASKS[name]()


def get_problem_set(name: str) -> ProblemSet:
    """Problems to answer by generation: `word_problems`, `gsm8k:FILE.jsonl`, `math:FILE.jsonl`, or any task
    name / task .jsonl (its clean prompts as questions, its reward as the verifier)."""
    if name == "word_problems":
        return WordProblems()
    for prefix, loader in (("gsm8k:", load_gsm8k), ("math:", load_math)):
        if name.startswith(prefix):
            return loader(name[len(prefix):])
    try:
        return TaskProblems(get_task(name))
    except TaskError:
        raise TaskError(f"unknown problem set {name!r}; choose word_problems, gsm8k:FILE.jsonl, math:FILE.jsonl, "
                        f"one of the tasks {sorted(TASKS)}, or a task .jsonl file") from None


__all__ = [
    "Addition", "GreaterThan", "IOI", "MathFile", "PairBatch", "Problem", "ProblemSet", "QAAddition", "Split", "Task",
    "TaskError", "TaskExample", "TaskProblems", "TASKS", "UserTask", "WordProblems", "answers_match", "final_answer",
    "from_jsonl", "from_records", "get_problem_set", "get_task", "load_gsm8k", "load_math", "normalize_answer",
    "distinct_examples", "problems_sha256", "tokenize_pairs",
]
