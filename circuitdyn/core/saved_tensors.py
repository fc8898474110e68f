"""What autograd keeps for a backward: the bytes of every tensor it saves, counted once per storage.

Memory estimates measure instead of modelling: run one small forward inside `saved_tensor_storages` and
read the bytes of what the backward would need, the parameters excluded (they are there anyway).
The probed graph keeps none of the tensors: a pack hook that returned them would close a reference cycle
inside autograd (a node holding its own output), invisible to Python's collector, and every probe would
leak its activations and, through the graph, the model's parameters. So the probed forward has no backward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor


@contextlib.contextmanager
def saved_tensor_storages(exclude: Iterable[Tensor], tags: dict[int, Any] | None = None,
                          tag: Callable[[], Any] | None = None) -> Iterator[dict[int, int]]:
    """Yields {storage pointer: bytes} of every tensor autograd saves inside the block, with gradients on;
    storages of `exclude` (the parameters) are left out. Sum the values after the block. The block's
    outputs have no backward (see the module docstring). With `tags`, each storage's `tag()` when it was
    first saved goes there (e.g. the block that saved it)."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    storages: dict[int, int] = {}
    alive: list[torch.UntypedStorage] = []  # held for the block, so a freed pointer is not reused and missed

    def pack(t: Tensor) -> None:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            if tags is not None and tag is not None and storage.data_ptr() not in storages:
                tags[storage.data_ptr()] = tag()
            storages[storage.data_ptr()] = storage.nbytes()
            alive.append(storage)

    def unpack(_: None) -> Tensor:
        raise RuntimeError("a forward probed by saved_tensor_storages keeps no tensors and has no backward")

    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            yield storages
    finally:
        alive.clear()
