"""Training checkpoints are Hugging Face model folders, and provenance names the weights really used.

Every zoo family, GPT-2 and GPT-NeoX included (their bridges compute with split q/k/v copies of a fused
matrix, which the export re-fuses): a checkpoint opens with AutoModelForCausalLM.from_pretrained and with
load_model, with the trained model's logits; an attribution of the trained model records a weights hash
that differs from the base's and equals the checkpoint's, and the training run that produced it."""

import json

import pytest
import torch

from circuitdyn.attribution import attribute
from circuitdyn.models import clone_model, load_model
from circuitdyn.models.export import hf_state_dict
from circuitdyn.models.wrapper_names import WRAPPER
from circuitdyn.tasks import Addition, tokenize_pairs
from circuitdyn.train import GRPOConfig, train
from tests.conftest import ALL_FAMILIES, zoo_model


@pytest.fixture(scope="module", params=ALL_FAMILIES)
def trained(request, tmp_path_factory):
    family = request.param
    model = clone_model(zoo_model(family))
    run = tmp_path_factory.mktemp(family) / "run"
    result = train(model, GRPOConfig(max_steps=2, save_steps=1, eval_steps=0, per_device_train_batch_size=8,
                                     num_generations=4, learning_rate=5e-3, output_dir=str(run)))
    return family, model, run, result


def test_checkpoints_open_as_hugging_face_folders_with_the_trained_logits(trained):
    from transformers import AutoModelForCausalLM

    family, model, run, _ = trained
    data = tokenize_pairs(model.tokenizer, Addition().examples(4, seed=1))
    with torch.no_grad():
        own = model.bridge(data.clean, attention_mask=data.mask.long())
        base = zoo_model(family).bridge(data.clean, attention_mask=data.mask.long())
    assert (own - base).abs().max() > 1e-3, "training must have moved the logits for the check to bite"
    for folder in (run / "final", run / "checkpoint-2"):
        assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= \
            {p.name for p in folder.iterdir()}
        hf = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
        with torch.no_grad():
            theirs = hf(data.clean, attention_mask=data.mask.long()).logits
        torch.testing.assert_close(theirs, own, rtol=1e-5, atol=1e-5)
        again = load_model(str(folder), device="cpu")
        with torch.no_grad():
            torch.testing.assert_close(again.bridge(data.clean, attention_mask=data.mask.long()), own,
                                       rtol=0, atol=1e-6)
    from safetensors.torch import load_file

    assert not any(WRAPPER in k for k in load_file(str(run / "final" / "model.safetensors")))


@pytest.mark.parametrize(("family", "fused"), [("gpt2", "attn.c_attn.weight"),
                                               ("neox", "attention.query_key_value.weight")])
def test_fused_projections_are_rebuilt_from_what_training_moved(family, fused):
    model = clone_model(zoo_model(family))
    before = hf_state_dict(model.bridge)
    train(model, GRPOConfig(max_steps=2, eval_steps=0, per_device_train_batch_size=8, num_generations=4,
                            learning_rate=5e-3))
    stale = {k.replace(WRAPPER, ""): v for k, v in model.bridge.original_model.state_dict().items()}
    exported = hf_state_dict(model.bridge)
    keys = [k for k in exported if k.endswith(fused)]
    assert any(not torch.equal(before[k], exported[k]) for k in keys), "training moved the attention"
    assert all(torch.equal(before[k], stale[k]) for k in keys), "the bridge's own fused matrix stays stale"


def test_attribution_provenance_names_the_trained_weights_and_run(trained):
    family, model, run, result = trained
    data = tokenize_pairs(model.tokenizer, Addition().examples(4, seed=1))
    tuned = attribute(model, "layer", data, "answer_nll", ablation="zero").provenance["model"]
    base = attribute(zoo_model(family), "layer", data, "answer_nll", ablation="zero").provenance["model"]
    saved = json.loads((run / "final" / "checkpoint.json").read_text())["state"]["weights_sha256"]
    record = json.loads((run / "final" / "circuitdyn_training.json").read_text())
    assert tuned["weights_sha256"] != base["weights_sha256"] == zoo_model(family).provenance.weights_sha256
    assert tuned["weights_sha256"] == saved == record["weights_sha256"]
    assert tuned["loaded_weights_sha256"] == base["weights_sha256"]
    assert tuned["training"]["algorithm"] == "grpo" and tuned["training"]["step"] == 2
    loaded = load_model(str(run / "final"), device="cpu")
    assert loaded.provenance.weights_sha256 == saved
    assert loaded.provenance.training["config_sha256"] == record["config_sha256"]
    assert loaded.provenance.training["base_weights_sha256"] == base["weights_sha256"]
    again = attribute(loaded, "layer", data, "answer_nll", ablation="zero").provenance["model"]
    assert again["weights_sha256"] == saved and again["training"]["algorithm"] == "grpo"


def test_exported_folders_say_their_weights_are_plain(tmp_path):
    """A model loaded from a de-quantized GGUF still says `quantization_config`; trainers (trl) refuse such a
    folder, and its exported weights are plain floats."""
    from circuitdyn.models.export import save_hf_folder

    model = clone_model(zoo_model("llama"))
    model.bridge.original_model.config.quantization_config = {"quant_method": "gguf"}
    save_hf_folder(model.bridge, model.tokenizer, tmp_path)
    assert "quantization_config" not in json.loads((tmp_path / "config.json").read_text())
    assert "quantization_config" in vars(model.bridge.original_model.config)  # the live model is left as it was
