"""The one requires_grad guard: set the flag on some parameters for a block, and restore exactly those after."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch


@contextlib.contextmanager
def requires_grad(params: Iterable[torch.nn.Parameter], flag: bool) -> Iterator[list[torch.nn.Parameter]]:
    """Within the block every parameter of `params` has `requires_grad == flag`; on exit (also on error) the
    ones that were changed get their old flag back. Yields the changed parameters."""
    changed = [p for p in params if p.requires_grad != flag]
    for p in changed:
        p.requires_grad_(flag)
    try:
        yield changed
    finally:
        for p in changed:
            p.requires_grad_(not flag)
