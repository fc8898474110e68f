import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

from circuitdyn.models import load_model
from circuitdyn.models.zoo import FAMILIES

ALL_FAMILIES = sorted(FAMILIES)
_CACHE: dict[str, object] = {}


def zoo_model(family: str):
    if family not in _CACHE:
        _CACHE[family] = load_model(f"zoo:{family}", device="cpu")
    return _CACHE[family]


@pytest.fixture(params=ALL_FAMILIES)
def family(request):
    return request.param


@pytest.fixture
def model(family):
    return zoo_model(family)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def perturbed(model, seed, scale=0.02):
    """A stand-in for a tuned copy: the model with a little seeded noise on every weight."""
    from circuitdyn.models import clone_model

    m = clone_model(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.bridge.original_model.parameters():
            p.add_(scale * p.std() * torch.randn(p.shape, generator=g))
    return m
