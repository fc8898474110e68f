"""Built-in tasks and the task protocol."""

from circuitdyn.tasks.addition import Addition
from circuitdyn.tasks.base import PairBatch, Task, TaskError, TaskExample, tokenize_pairs
from circuitdyn.tasks.greater_than import GreaterThan
from circuitdyn.tasks.ioi import IOI
from circuitdyn.tasks.user_data import UserTask, from_jsonl, from_records

TASKS = {"addition": Addition, "ioi": IOI, "greater_than": GreaterThan}


def get_task(name: str) -> Task:
    """A built-in task by name, or a user task from a `.jsonl` path."""
    if name.endswith(".jsonl"):
        return from_jsonl(name)
    if name not in TASKS:
        raise TaskError(f"unknown task {name!r}; choose one of {sorted(TASKS)} or give a .jsonl file")
    return TASKS[name]()


__all__ = [
    "Addition", "GreaterThan", "IOI", "PairBatch", "Task", "TaskError", "TaskExample", "TASKS", "UserTask",
    "from_jsonl", "from_records", "get_task", "tokenize_pairs",
]
