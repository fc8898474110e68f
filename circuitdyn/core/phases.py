"""Progress for steps that show no bar: say what starts and how long it took, on standard error."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def phase(what: str, enabled: bool = True) -> Iterator[None]:
    """`with phase("probing the layer graph"): ...` prints `probing the layer graph ...` before and the
    seconds it took after; nothing when `enabled` is False."""
    if not enabled:
        yield
        return
    print(f"{what} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    yield
    print(f"{what}: done in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
