"""Several gloo processes on this machine, torn down so that none can abort at exit.

A rank that returns normally ends its Python interpreter while gloo's worker threads may still hold the last
reference to a tensor of a finished collective; dropping it during interpreter finalization needs the GIL,
and a thread that asks for the GIL then is ended by the interpreter inside a C++ destructor: the process
aborts with SIGABRT ("terminate called without an active exception") after its work is done and saved. So
each rank here finishes its collectives, waits for every rank at a barrier, destroys the process group (which
drains and joins gloo's threads), flushes its output and leaves with `os._exit`, skipping the finalization
that the abort needs. A rank whose work raised skips the barrier (the others may be gone) and re-raises, so
`mp.spawn` reports its traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.distributed as dist
import torch.multiprocessing as mp


def _rank(rank: int, world: int, init_file: str, work: Callable[..., None], args: tuple[Any, ...]) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        work(rank, *args)
    except BaseException:
        dist.destroy_process_group()
        raise
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_ranks(work: Callable[..., None], world: int, folder: Path, *args: Any) -> None:
    """`work(rank, *args)` in `world` gloo processes (file rendezvous in `folder`), each torn down as above."""
    mp.spawn(_rank, args=(world, str(folder / "init"), work, args), nprocs=world, join=True)
