"""What autograd keeps for a backward: the bytes of every tensor it saves, counted once per storage.

Memory estimates measure instead of modelling: run one small forward inside `saved_tensor_storages` and
read the bytes of what the backward would need, the parameters excluded (they are there anyway).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor


@contextlib.contextmanager
def saved_tensor_storages(exclude: Iterable[Tensor]) -> Iterator[dict[int, int]]:
    """Yields {storage pointer: bytes} of every tensor autograd saves inside the block, with gradients on;
    storages of `exclude` (the parameters) are left out. Sum the values after the block."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    storages: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield storages
