import time

import pytest
import torch
from transformers import AutoModelForCausalLM

from circuitdyn.graph import HookFlagsUnavailable, attribution_hooks
from circuitdyn.models import ModelSpecError, load_model
from circuitdyn.models.files import save_model_folder
from circuitdyn.models.zoo import char_tokenizer
from tests.conftest import zoo_model


def test_logits_match_raw_hf(family):
    m = zoo_model(family)
    raw = AutoModelForCausalLM.from_pretrained(m.provenance.source).eval()
    ids = torch.tensor([m.tokenizer("23+58=81").input_ids, m.tokenizer("90+19=10").input_ids])
    with torch.no_grad():
        assert (m.bridge(ids) - raw(ids).logits).abs().max() <= 1e-5
        with attribution_hooks(m):
            assert (m.bridge(ids) - raw(ids).logits).abs().max() <= 1e-5


def test_hook_shapes_and_flags_restored(family):
    m = zoo_model(family)
    cfg = m.cfg
    n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
    ids = torch.tensor([m.tokenizer("12+34=").input_ids])
    with attribution_hooks(m) as bridge:
        _, cache = bridge.run_with_cache(ids)
    B, T, H, d = 1, ids.shape[1], cfg.n_heads, cfg.d_model
    assert cache["blocks.0.attn.hook_result"].shape == (B, T, H, d)
    assert cache["blocks.0.attn.hook_q_input"].shape == (B, T, H, d)
    assert cache["blocks.0.attn.hook_k_input"].shape == (B, T, n_kv, d)
    assert cache["blocks.0.attn.hook_v_input"].shape == (B, T, n_kv, d)
    assert cache["blocks.0.hook_mlp_in"].shape == (B, T, d)
    assert not any(getattr(cfg, f) for f in ("use_attn_result", "use_split_qkv_input", "use_hook_mlp_in"))


def test_flags_restored_on_error():
    m = zoo_model("gpt2")
    with pytest.raises(RuntimeError):
        with attribution_hooks(m):
            raise RuntimeError("boom")
    assert not m.cfg.use_attn_result and not m.cfg.use_split_qkv_input


def test_families_have_their_structure():
    assert zoo_model("neox").cfg.parallel_attn_mlp
    # really parallel: the MLP reads the block input, not the post-attention residual
    m = zoo_model("neox")
    ids = torch.tensor([m.tokenizer("12+34=").input_ids])
    with attribution_hooks(m) as bridge:
        _, cache = bridge.run_with_cache(ids)
    assert torch.equal(cache["blocks.1.hook_mlp_in"], cache["blocks.1.hook_resid_pre"])
    assert zoo_model("llama").cfg.n_key_value_heads == 2
    assert zoo_model("qwen2").cfg.n_key_value_heads == 2
    assert hasattr(zoo_model("gemma3").bridge.blocks[0], "ln1_post")


def test_provenance(family):
    p = zoo_model(family).provenance
    assert p.family == family and p.dtype == "float32" and len(p.weights_sha256) == 64 and p.n_params > 50_000


def test_tokenizer_round_trip(family):
    tok = zoo_model(family).tokenizer
    text = "23+58=81 When Mary and John"
    assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text


def test_unknown_specs_fail_clearly():
    with pytest.raises(ModelSpecError, match="zoo:gpt2"):
        load_model("zoo:nope")
    with pytest.raises(ModelSpecError, match="no such model folder"):
        load_model("/definitely/not/here")


def test_hub_id_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(ModelSpecError, match="HF_HUB_OFFLINE"):
        load_model("some-org/some-model-that-is-not-cached")
    assert time.perf_counter() - t0 < 5


def test_missing_tokenizer_is_refused(tmp_path):
    src = zoo_model("gpt2")
    raw = AutoModelForCausalLM.from_pretrained(src.provenance.source)
    raw.save_pretrained(tmp_path)
    with pytest.raises(ModelSpecError, match="tokenizer"):
        load_model(str(tmp_path))


def test_local_folder_round_trip(tmp_path):
    src = zoo_model("llama")
    raw = AutoModelForCausalLM.from_pretrained(src.provenance.source)
    save_model_folder(raw, char_tokenizer(), tmp_path / "copy")
    m = load_model(str(tmp_path / "copy"))
    assert m.provenance.weights_sha256 == src.provenance.weights_sha256


def test_boot_native_refuses_per_head_hooks():
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    cfg = TransformerBridgeConfig(d_model=16, d_head=4, n_layers=1, n_ctx=8, n_heads=4, d_vocab=10, d_mlp=32, act_fn="gelu")
    bridge = TransformerBridge.boot_native(cfg)
    with pytest.raises(HookFlagsUnavailable, match="boot_transformers"):
        with attribution_hooks(bridge):
            pass
