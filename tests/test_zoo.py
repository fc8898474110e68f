import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from circuitdyn.models.zoo import FAMILIES, SHIPPED_DIR, ZooSpec, greedy_accuracy, pretrain, zoo_path, zoo_spec
from circuitdyn.tasks import Addition
from tests.conftest import zoo_model


def test_shipped_weights_match_the_current_recipe(family):
    assert zoo_path(family) == SHIPPED_DIR / family, "shipped zoo weights are stale: run python -m circuitdyn.models.zoo --ship"


def test_accuracy_band(family):
    info = json.loads((SHIPPED_DIR / family / "zoo.json").read_text())
    assert 0.5 <= info["held_out_accuracy"] <= 0.9
    m = zoo_model(family)
    # re-measure on the loaded model, through the HF module the bridge wraps
    acc = greedy_accuracy(m.bridge.original_model, m.tokenizer, Addition().examples(400, seed=1, split="test"))
    assert acc == pytest.approx(info["held_out_accuracy"])


def test_pretraining_is_deterministic():
    spec = ZooSpec(family="llama", n_kv_heads=2, max_steps=20, eval_every=1000)
    a, _, _ = pretrain(spec)
    b, _, _ = pretrain(spec)
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and torch.equal(pa, pb)


def test_unknown_family():
    with pytest.raises(ValueError, match="gpt2"):
        zoo_spec("mamba")


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_retraining_reproduces_shipped_weights(family):
    model, _, info = pretrain(zoo_spec(family))
    shipped = AutoModelForCausalLM.from_pretrained(SHIPPED_DIR / family).state_dict()
    ours = model.state_dict()
    assert shipped.keys() == ours.keys()
    for name, tensor in shipped.items():
        assert torch.equal(ours[name], tensor), name
    assert info["held_out_accuracy"] == json.loads((SHIPPED_DIR / family / "zoo.json").read_text())["held_out_accuracy"]
