"""The memory one attribution pass may hold, when the caller does not say: what the device has free.

On a CUDA device, CUDA_SHARE of its free memory (what the driver reports after this process's own tensors,
the model's weights among them); elsewhere, RAM_SHARE of the machine's available RAM (the kernel's
MemAvailable: free memory plus what it can reclaim), leaving room for the rest of the process, the
allocator's slack and other processes. The estimate it is compared with (engine.peak_estimate) is
measured, so a share below 1 is margin, not a fudge.
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil
import torch

CUDA_SHARE = 0.9
RAM_SHARE = 0.5


@dataclass(frozen=True)
class Budget:
    bytes: int
    source: str  # how it was chosen, for messages and provenance

    def describe(self) -> str:
        return f"{self.bytes / 2**20:.0f} MiB ({self.source})"


def memory_budget(device: torch.device, given: int | None = None) -> Budget:
    """`given` bytes when set; else the device's free memory times its share (see the module docstring)."""
    if given is not None:
        return Budget(int(given), "memory_budget")
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return Budget(int(free * CUDA_SHARE), f"{CUDA_SHARE:.0%} of the {free / 2**30:.1f} GiB free on {device}")
    available = psutil.virtual_memory().available
    return Budget(int(available * RAM_SHARE), f"{RAM_SHARE:.0%} of the {available / 2**30:.1f} GiB of available RAM")
