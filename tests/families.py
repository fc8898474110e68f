"""The family matrix: tiny random-weight models of every architecture family, built from Hugging Face configs
(no hub), saved with the zoo's character tokenizer and loaded through `load_model(folder)` as a user would.

`SUPPORT` says which graphs each family supports; the others must be refused with a clear message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

HEAD, LAYER, MERGED = "head", "layer", "layer-merged"
ALL_GRAPHS = (HEAD, LAYER, MERGED)


def _configs(vocab: int, pad: int, bos: int, eos: int) -> dict[str, Any]:
    import transformers as tf

    ids = dict(vocab_size=vocab, pad_token_id=pad, bos_token_id=bos, eos_token_id=eos)
    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  max_position_embeddings=64, **ids)
    return {
        "mistral": tf.MistralConfig(num_key_value_heads=2, **common),
        "phi3": tf.Phi3Config(num_key_value_heads=2, **common),
        "qwen3": tf.Qwen3Config(num_key_value_heads=2, head_dim=8, **common),
        "olmo": tf.OlmoConfig(**common),
        "olmo2": tf.Olmo2Config(num_key_value_heads=2, **common),  # post-norm only: no ln1
        "stablelm": tf.StableLmConfig(num_key_value_heads=2, **common),
        "gemma": tf.GemmaConfig(num_key_value_heads=2, head_dim=8, **common),
        "gemma2": tf.Gemma2Config(num_key_value_heads=2, head_dim=8, **common),  # pre- and post-norms
        "phi": tf.PhiConfig(**common),  # parallel attention + MLP sharing one norm
        "falcon": tf.FalconConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  parallel_attn=True, new_decoder_architecture=False, multi_query=False, alibi=False,
                                  pad_token_id=pad, bos_token_id=bos, eos_token_id=eos),  # parallel, one shared norm
        "gpt_bigcode": tf.GPTBigCodeConfig(n_embd=32, n_layer=2, n_head=4, n_positions=64, **ids),
        "gptj": tf.GPTJConfig(n_embd=32, n_layer=2, n_head=4, n_inner=64, n_positions=64, rotary_dim=4, **ids),
        "gptneo": tf.GPTNeoConfig(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                                  max_position_embeddings=64, attention_types=[[["global", "local"], 1]],
                                  window_size=16, **ids),
        "opt": tf.OPTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
                            max_position_embeddings=64, word_embed_proj_dim=32, **ids),
        "bloom": tf.BloomConfig(hidden_size=32, n_layer=2, n_head=4, **ids),
    }


TINY_FAMILIES = ("mistral", "phi3", "qwen3", "olmo", "olmo2", "stablelm", "gemma", "gemma2", "phi", "falcon",
                 "gpt_bigcode", "gptj", "gptneo", "opt", "bloom")
SUPPORT: dict[str, tuple[str, ...]] = {name: ALL_GRAPHS for name in TINY_FAMILIES}
SUPPORT.update({
    # the bridge's hook_mlp_in never reaches Bloom's MLP: refused by the liveness probe
    "bloom": (),
})
_FOLDERS: dict[str, Path] = {}


def tiny_folder(name: str, root: Path) -> Path:
    """A saved tiny random-weight model of family `name` (built once per test session)."""
    if name not in _FOLDERS:
        from circuitdyn.models.files import save_model_folder
        from circuitdyn.models.zoo import char_tokenizer

        tok = char_tokenizer()
        cfg = _configs(len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)[name]
        from transformers import AutoModelForCausalLM

        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg).eval()
        _FOLDERS[name] = save_model_folder(model, tok, root / name)
    return _FOLDERS[name]
