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
def saved_tensor_storages(exclude: Iterable[Tensor], tags: dict[Any, Any] | None = None,
                          tag: Callable[[], Any] | None = None) -> Iterator[dict[Any, int]]:
    """Yields {key: bytes} of every storage autograd saves inside the block, with gradients on, one key per
    storage; storages of `exclude` (the parameters) are left out. Sum the values after the block. The block's
    outputs have no backward (see the module docstring). With `tags`, each storage's `tag()` when it was
    first saved goes there (e.g. the block that saved it).

    A saved storage is held, so that a freed pointer reused by a new storage is not mistaken for it, until the
    probe is two blocks further on (`tag()` an int block index >= 0; anything else, e.g. -1 for outside the
    blocks, is held to the end): the probe then holds about what a run that recomputes block by block keeps,
    not every activation of the forward. A storage released and saved again later counts twice (an
    overestimate, never an underestimate)."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    storages: dict[Any, int] = {}
    alive: dict[int, tuple[torch.UntypedStorage, Any]] = {}  # pointer -> (the storage, held), its tag
    newest = [-1]

    def pack(t: Tensor) -> None:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in skip or ptr in alive:
            return
        where = tag() if tag is not None else None
        if isinstance(where, int) and where > newest[0]:  # a new block: release the ones two blocks back
            newest[0] = where
            for old in [p for p, (_, w) in alive.items() if isinstance(w, int) and 0 <= w <= where - 2]:
                del alive[old]
        key = len(storages)
        storages[key] = storage.nbytes()
        if tags is not None:
            tags[key] = where
        alive[ptr] = (storage, where)

    def unpack(_: None) -> Tensor:
        raise RuntimeError("a forward probed by saved_tensor_storages keeps no tensors and has no backward")

    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            yield storages
    finally:
        alive.clear()
