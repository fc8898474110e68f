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
