"""A pair's generations as the RL-circuitry paper's pipeline writes them (`all_correct.jsonl`): one JSON row
per problem that both models answer correctly, with the token ids of each model's prompt and answer.

    {"base_prompt_tokens": [...], "base_answer_tokens": [...], "rl_prompt_tokens": [...],
     "rl_answer_tokens": [...], "base_answer_tokens_range": [start, end], "rl_answer_tokens_range": [...]}

A study reads such files (generations made with any engine, e.g. vLLM at thousands of tokens) instead of
generating, and writes the same schema for the pairs it generated, so files move both ways. The ranges are
written for the paper's loader and not needed on reading.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from circuitdyn.core.atomic import atomic_write_text
from circuitdyn.study.config import StudyError
from circuitdyn.study.generation import Generation

FIELDS = ("base_prompt_tokens", "base_answer_tokens", "rl_prompt_tokens", "rl_answer_tokens")


@dataclass(frozen=True)
class PairRow:
    """One problem both models of a pair answered correctly: the base's generation and each tuned seed's."""

    base: Generation
    tuned: tuple[Generation, ...]

    @property
    def key(self) -> tuple[int, ...]:
        """The base's prompt ids: the same problem in every pair."""
        return self.base.prompt_ids


def _ids(value: object, where: str, name: str, vocab_size: int, nonempty: bool) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        raise StudyError(f"{where}: {name} must be a list of token ids (integers)")
    bad = [t for t in value if not 0 <= t < vocab_size]
    if bad:
        raise StudyError(f"{where}: {name} holds token ids outside the vocabulary [0, {vocab_size}) (e.g. {bad[0]}): "
                         "the file was made with another tokenizer")
    if nonempty and not value:
        raise StudyError(f"{where}: {name} is empty; a pair's rows must hold both models' prompts and answers")
    return tuple(value)


def read_pair_file(path: str | Path, vocab_size: int) -> list[tuple[Generation, Generation]]:
    """(base, tuned) generations of every row of a pair file, checked; errors name the file and line."""
    path = Path(path).expanduser()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise StudyError(f"generations file {path}: cannot read it ({err})") from None
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise StudyError(f"{where}: not valid JSON ({err})") from None
        if not isinstance(row, dict):
            raise StudyError(f"{where}: expected a JSON object with {', '.join(FIELDS)}")
        missing = [f for f in FIELDS if f not in row]
        if missing:
            raise StudyError(f"{where}: lacks {missing}; a row holds {', '.join(FIELDS)} (the paper's all_correct.jsonl)")
        ids = {f: _ids(row[f], where, f, vocab_size, True) for f in FIELDS}
        out.append((Generation(ids["base_prompt_tokens"], ids["base_answer_tokens"], "", True, True),
                    Generation(ids["rl_prompt_tokens"], ids["rl_answer_tokens"], "", True, True)))
    if not out:
        raise StudyError(f"generations file {path} holds no rows")
    return out


def pair_rows(files: Sequence[list[tuple[Generation, Generation]]], label: str) -> list[PairRow]:
    """The rows of a pair from one file per seed: the files must list the same problems (base prompts and
    answers) in the same order."""
    first = files[0]
    for r, other in enumerate(files[1:], 1):
        if len(other) != len(first) or any(a[0] != b[0] for a, b in zip(first, other)):
            raise StudyError(f"{label}: generations file {r + 1} does not list the same base rows as file 1; seeds of "
                             "one label are read from files of the same problems in the same order")
    return [PairRow(rows[0][0], tuple(f[i][1] for f in files)) for i, rows in enumerate(zip(*files))]


def _row(base: Generation, tuned: Generation) -> str:
    def ranged(g: Generation) -> list[int]:
        return [len(g.prompt_ids), len(g.prompt_ids) + len(g.response_ids)]
    return json.dumps({"base_prompt_tokens": list(base.prompt_ids), "base_answer_tokens": list(base.response_ids),
                       "rl_prompt_tokens": list(tuned.prompt_ids), "rl_answer_tokens": list(tuned.response_ids),
                       "base_answer_tokens_range": ranged(base), "rl_answer_tokens_range": ranged(tuned)})


def write_pair_files(folder: Path, label: str, rows: Sequence[PairRow]) -> list[Path]:
    """One file per seed: `LABEL.jsonl` for one, `LABEL_seedR.jsonl` for several; line i is row i."""
    n_seeds = len(rows[0].tuned) if rows else 1
    paths = []
    for r in range(n_seeds):
        path = folder / (f"{label}.jsonl" if n_seeds == 1 else f"{label}_seed{r}.jsonl")
        atomic_write_text(path, "".join(_row(row.base, row.tuned[r]) + "\n" for row in rows))
        paths.append(path)
    return paths
