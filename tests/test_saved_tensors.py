"""The saved-tensor probe (core/saved_tensors.py) counts every storage a backward would need, once, while
holding only about two blocks of them: probing a forward must not need the memory of keeping all of it.

Synthetic blocks of 32 MiB activations each (one saved storage per block, freed by the forward as a
recomputing run frees it): the count is every block's, and the process's resident memory grows by a few
blocks, not by all of them. Holding every storage (as the probe did) grows it by all eight: the check can fail.
"""

import gc

import psutil
import torch

from circuitdyn.core.saved_tensors import saved_tensor_storages

MIB = 2 ** 20
BLOCK = 32 * MIB


def probe_blocks(n: int) -> tuple[dict, dict, int]:
    """n blocks, each saving one fresh 32 MiB storage (exp saves its output); the peak RSS growth."""
    where = [-1]
    tags: dict = {}
    process = psutil.Process()
    gc.collect()
    before = peak = process.memory_info().rss
    with saved_tensor_storages([], tags, lambda: where[0]) as storages:
        for b in range(n):
            where[0] = b
            x = torch.full((BLOCK // 4,), 0.5, requires_grad=True)
            y = x.exp()  # saved: its output
            del x, y
            peak = max(peak, process.memory_info().rss)
        where[0] = -1
    return storages, tags, peak - before


def test_every_blocks_storage_is_counted_once():
    storages, tags, _ = probe_blocks(8)
    assert sum(storages.values()) == 8 * BLOCK
    assert sorted(tags.values()) == list(range(8))


def test_the_probe_holds_about_two_blocks_not_all_of_them():
    _, _, grown = probe_blocks(8)
    assert grown <= 4.5 * BLOCK, f"the probe grew by {grown / MIB:.0f} MiB for 8 x 32 MiB blocks"


def test_a_storage_saved_twice_in_one_block_counts_once():
    with saved_tensor_storages([]) as storages:
        x = torch.ones(1000, requires_grad=True)
        y = x.exp()
        z = y * y  # saves y again, twice (both operands)
    assert list(storages.values()) == [4000]  # y's storage: exp's output and mul's operands
    del z
