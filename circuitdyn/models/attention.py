"""Memory-efficient attention in the bridge, for passes that read no attention pattern.

TransformerLens' bridge recomputes attention eagerly so that `hook_attn_scores` and `hook_pattern` see the
[batch, heads, T, T] scores and pattern; autograd then keeps the pattern of every layer for the backward (and,
in bf16, its cast copy), which grows with T^2. Edge attribution reads no pattern. Inside
`efficient_attention(model)`, each attention module whose computation this module knows computes
softmax(q k^T * scale + mask) v with torch's `scaled_dot_product_attention` instead, which keeps q, k, v, the
output and one log-sum-exp per row (O(T) per layer) and, on CPU and GPU alike, never forms the [T, T] tensor.
Every other hook fires where the bridge fires it (inputs, per-head q/k/v inputs, q/k norms, rotated q/k,
hook_z, per-head results, the output), on the same values.

Known: the bridge's `PositionEmbeddingsAttentionBridge` (Llama, Qwen2/3, Mistral, Gemma, Gemma3, OLMo,
OLMo2, StableLM, Phi), `JointQKVAttentionBridge` (GPT-2, GPT-BigCode) and
`JointQKVPositionEmbeddingsAttentionBridge` (GPT-NeoX, Phi-3, Falcon). A module keeps the bridge's own
attention for a call that needs what the kernel cannot give: a hook on its scores or pattern, logit
softcapping (Gemma2), attention sinks, gated or scaled queries, clipped q/k/v, dropout in
training, compatibility mode's -inf masking; so does every other attention class (ALiBi, attention
delegated to Hugging Face). `AttentionUse` counts which calls took which path.
"""

from __future__ import annotations

import contextlib
import types
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from circuitdyn.models.loaded import as_bridge

Queries = Float[Tensor, "batch heads seq d_head"]
KeysValues = Float[Tensor, "batch kv_heads keys d_head"]


class AttentionKernel(str, Enum):
    SDPA = "sdpa"  # scaled-dot-product attention where the module allows it; no [T, T] tensor kept
    EAGER = "eager"  # the bridge's own attention: the pattern materialised (and kept for a backward)


@dataclass
class AttentionUse:
    """How many attention calls ran the memory-efficient kernel and how many the bridge's eager attention."""

    sdpa: int = 0
    eager: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"sdpa": self.sdpa, "eager": self.eager}


def _bridge_classes() -> tuple[type, type, type]:
    from transformer_lens.model_bridge.generalized_components import (
        JointQKVAttentionBridge,
        JointQKVPositionEmbeddingsAttentionBridge,
        PositionEmbeddingsAttentionBridge,
    )
    return PositionEmbeddingsAttentionBridge, JointQKVAttentionBridge, JointQKVPositionEmbeddingsAttentionBridge


@contextlib.contextmanager
def efficient_attention(model: Any, enabled: bool = True) -> Iterator[AttentionUse]:
    """Run the known attention modules of `model` with scaled-dot-product attention until exit (see the
    module docstring); yields the counts of calls per path. `enabled=False` changes nothing."""
    use = AttentionUse()
    if not enabled:
        yield use
        return
    rotary, joint, joint_rotary = _bridge_classes()
    masks = _MaskCache()
    patched: list[tuple[Any, str]] = []
    try:
        for module in as_bridge(model).modules():
            if type(module) is rotary:
                _patch(module, "forward", _rotary_forward(module, masks, use), patched)
            elif type(module) in (joint, joint_rotary):
                _patch(module, "_reconstruct_attention", _joint_core(module, masks, use), patched)
        yield use
    finally:
        for module, name in patched:
            vars(module).pop(name, None)  # the class's method shows through again


def _patch(module: Any, name: str, fn: Callable[..., Any], patched: list[tuple[Any, str]]) -> None:
    if name in vars(module):  # already patched (nested contexts): the outer one restores it
        return
    vars(module)[name] = types.MethodType(fn, module)  # not setattr: the bridge forwards that to the HF module
    patched.append((module, name))


# ---- the kernel ---------------------------------------------------------------------------------------------
class _MaskCache:
    """One additive mask per mask the model passes (the same for every layer of a forward): SDPA keeps its mask
    for the backward, and one shared tensor is kept once. None when the mask is plain causal."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self.entries: OrderedDict[tuple[Any, ...], tuple[Tensor | None, Tensor | None]] = OrderedDict()

    def get(self, module: Any, attention_mask: Tensor | None, q: Tensor, n_keys: int) -> Tensor | None:
        key = (id(attention_mask), type(module), q.dtype, q.device, q.shape[-2], n_keys, module.is_causal)
        if key in self.entries and self.entries[key][0] is attention_mask:
            return self.entries[key][1]
        zeros = torch.zeros(1, 1, q.shape[-2], n_keys, dtype=q.dtype, device=q.device)
        additive = module._apply_reconstruct_attention_mask(attn_scores=zeros, attention_mask=attention_mask,
                                                            seq_len=n_keys, q_seq_len=q.shape[-2])
        mask = None if _is_plain_causal(additive) else additive
        self.entries[key] = (attention_mask, mask)  # the reference keeps id() from being reused
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)
        return mask


def _is_plain_causal(additive: Tensor) -> bool:
    """The additive mask allows exactly the causal triangle, with one value there (softmax ignores a constant:
    the bridge adds a 2-D mask of ones as it is) and the dtype's minimum elsewhere."""
    t, s = additive.shape[-2:]
    if t != s:
        return False
    tril = torch.ones(t, s, dtype=torch.bool, device=additive.device).tril()
    blocked = additive <= torch.finfo(additive.dtype).min / 2
    allowed = additive.masked_select(~blocked)
    return bool((blocked == ~tril).all() and (allowed == allowed[0]).all())


def sdpa(q: Queries, k: KeysValues, v: KeysValues, mask: Tensor | None, scale: float) -> Queries:
    """softmax(q k^T * scale + mask) v, with grouped key/value heads (head h reads kv head h // (H / H_kv)).
    A None mask is causal."""
    gqa = k.shape[1] != q.shape[1]
    if gqa and (mask is not None and q.device.type == "cuda"):  # CUDA's masked kernels take no grouped heads
        k, v = (x.repeat_interleave(q.shape[1] // x.shape[1], dim=1) for x in (k, v))
        gqa = False
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, scale=scale,
                                          enable_gqa=gqa)


def _pattern_free(module: Any, kwargs: dict[str, Any]) -> bool:
    """Nothing in this call needs the [T, T] scores or pattern, or what the kernel does not compute."""
    hooked = any(h._forward_hooks or h._forward_pre_hooks for h in (module.hook_attn_scores, module.hook_pattern))
    hf = module.original_component
    dropout = module.training and float(getattr(hf, "attention_dropout", 0.0) or 0.0) > 0
    return not (hooked or dropout or module.compatibility_mode)


# ---- GPT-2, GPT-BigCode, GPT-NeoX, Phi-3, Falcon: the core after the fused q/k/v projection ------------------
def _joint_core(module: Any, masks: _MaskCache, use: AttentionUse) -> Callable[..., Any]:
    eager = type(module)._reconstruct_attention
    rotary = hasattr(module, "_apply_rotary_pos_emb")

    def core(self: Any, q: Tensor, k: Tensor, v: Tensor, **kwargs: Any) -> tuple[Tensor, Tensor | None]:
        if not _pattern_free(self, kwargs):
            use.eager += 1
            return eager(self, q, k, v, **kwargs)
        use.sdpa += 1
        n_heads = int(self.config.n_heads)
        n_kv = int(getattr(self.config, "n_key_value_heads", None) or n_heads)
        q, k, v, batch, seq, d_head = self._reshape_qkv_to_heads(q, k, v, n_heads, n_kv)
        scale = d_head ** -0.5
        dtype = v.dtype
        if rotary:
            if isinstance(kwargs.get("position_embeddings"), tuple):
                cos, sin = self._apply_position_embedding_hooks(kwargs["position_embeddings"])
                q, k = self._apply_rotary_pos_emb(q, k, cos, sin)
            k, v = self._update_kv_cache(k, v, **kwargs)
        else:
            k, v = self._update_kv_cache(k, v, **kwargs)
            if getattr(self.config, "scale_attn_by_inverse_layer_idx", False) and self._layer_idx is not None:
                scale /= float(self._layer_idx + 1)
            if getattr(self, "_reorder_and_upcast_attn", False):  # scores and softmax in float32, as the bridge
                q, k, v = q.float(), k.float(), v.float()
        out = sdpa(q, k, v, masks.get(self, kwargs.get("attention_mask"), q, k.shape[-2]), scale).to(dtype)
        out = self._reshape_attn_output(out, batch, seq, n_heads, d_head)
        return _output_projection(self, out, (batch, seq), n_heads, d_head, self._apply_output_projection), None
    return core


def _output_projection(module: Any, z: Tensor, lead: tuple[int, ...], n_heads: int, d_head: int,
                       project: Callable[[Tensor], Tensor]) -> Tensor:
    """z (flat, [.., H * d_head]) through W_O: per head (hook_z, then hook_result) when per-head results are on."""
    o = getattr(module, "o", None)
    if getattr(module.config, "use_attn_result", False) and o is not None and o.original_component is not None:
        z = o.hook_in(z)
        return module._compute_per_head_result(z.view(*lead, n_heads, d_head), n_heads, d_head)
    return project(z)


# ---- Llama, Qwen, Mistral, Gemma, Gemma3, OLMo, OLMo2, StableLM, Phi: the whole attention forward -----------
def _rotary_forward(module: Any, masks: _MaskCache, use: AttentionUse) -> Callable[..., Any]:
    eager = type(module).forward

    def forward(self: Any, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor | None]:
        if not (_pattern_free(self, kwargs) and _plain_rotary(self, kwargs)):
            use.eager += 1
            return eager(self, *args, **kwargs)
        use.sdpa += 1
        kwargs = dict(kwargs)
        hidden = kwargs.pop("hidden_states") if "hidden_states" in kwargs else args[0]
        x = self.hook_in(hidden)
        lead, d_head = tuple(x.shape[:-1]), int(self.original_component.head_dim)
        q, k, v = _projections(self, x, d_head)
        q, k = _qk_norms(self, q, k, d_head)
        q, k = _rotate(self, q, k, kwargs.get("position_embeddings"))
        if hasattr(self, "hook_rot_q"):
            q = self.hook_rot_q(q)
        if hasattr(self, "hook_rot_k"):
            k = self.hook_rot_k(k)
        k, v = self._update_kv_cache(k, v, **kwargs)  # the model's cache, as the bridge extends it
        scale = float(getattr(self.original_component, "scaling", d_head ** -0.5))
        out = sdpa(q, k, v, masks.get(self, kwargs.get("attention_mask"), q, k.shape[-2]), scale)
        z = out.transpose(1, 2).contiguous().reshape(*lead, -1)
        o_weight = getattr(getattr(self.o, "original_component", None), "weight", None)
        if isinstance(o_weight, Tensor) and o_weight.dtype.is_floating_point and z.dtype != o_weight.dtype:
            z = z.to(o_weight.dtype)  # rotary modules that return float32 cos/sin promote q/k
        return self.hook_out(_output_projection(self, z, lead, z.shape[-1] // d_head, d_head, self.o)), None
    return forward


def _plain_rotary(module: Any, kwargs: dict[str, Any]) -> bool:
    """The forward has none of the variants `_rotary_forward` leaves to the bridge."""
    cfg, hf = module.config, module.original_component
    rope = getattr(getattr(hf, "config", None), "rope_parameters", None)
    variants = (
        getattr(cfg, "use_attn_in", False), getattr(cfg, "gated_q_proj", False),
        getattr(cfg, "qk_norm_after_rope", False), getattr(cfg, "rotary_interleaved_cos_sin", False),
        getattr(cfg, "rotary_adjacent_pairs", False), getattr(hf, "sinks", None) is not None,
        getattr(hf, "key_multiplier", None) is not None, getattr(hf, "attn_logit_softcapping", None) is not None,
        getattr(getattr(hf, "config", None), "clip_qkv", None) is not None,
        isinstance(rope, dict) and rope.get("llama_4_scaling_beta") is not None,
        module._modules.get("gate") is not None,
        kwargs.get("position_embeddings") is None and getattr(cfg, "positional_embedding_type", None) == "rotary",
    )
    return not any(variants)


def _projections(module: Any, x: Tensor, d_head: int) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v as [batch, heads, seq, d_head]: through the per-head input copies when split q/k/v inputs are on
    (each head's own hook_q/k/v_input), else through the q/k/v projections."""
    cfg = module.config
    if getattr(cfg, "use_split_qkv_input", False) and getattr(cfg, "n_heads", 0):
        n_heads = int(cfg.n_heads)
        n_kv = int(getattr(cfg, "n_key_value_heads", None) or n_heads)
        source = module._captured_pre_ln_residual if module._captured_pre_ln_residual is not None else x
        per_head = [module._project_per_head_qkv(proj, module._fork_and_norm_per_head(source, hook, n), n, d_head)
                    for proj, hook, n in ((module.q, module.hook_q_input, n_heads),
                                          (module.k, module.hook_k_input, n_kv), (module.v, module.hook_v_input, n_kv))]
        q, k, v = per_head
        q, k = _pre_reshape_norms(module, q, k, d_head)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    q, k, v = module.q(x), module.k(x), module.v(x)
    q, k = _pre_reshape_norms(module, q, k, d_head)
    return tuple(t.view(*x.shape[:-1], -1, d_head).transpose(1, 2) for t in (q, k, v))  # type: ignore[return-value]


def _pre_reshape_norms(module: Any, q: Tensor, k: Tensor, d_head: int) -> tuple[Tensor, Tensor]:
    """OLMo2's q/k norms over all heads at once, before the split into heads."""
    if "q_norm" not in module.submodules or module._qk_norm_phase != "pre_reshape":
        return q, k
    q = module._apply_pre_reshape_qk_norm(q, module.q_norm, module.hook_q_normed, d_head)
    if "k_norm" in module.submodules:
        k = module._apply_pre_reshape_qk_norm(k, module.k_norm, module.hook_k_normed, d_head)
    return q, k


def _qk_norms(module: Any, q: Tensor, k: Tensor, d_head: int) -> tuple[Tensor, Tensor]:
    """Gemma3's and Qwen3's per-head q/k norms ([batch, heads, seq, d_head])."""
    if "q_norm" not in module.submodules or module._qk_norm_phase != "post_reshape":
        return q, k

    def norm(x: Tensor, fn: Any, hook: Any) -> Tensor:
        if module._qk_norm_per_head:  # (heads, d_head) weights broadcast on the [batch, seq, heads, d] layout
            return hook(fn(x.transpose(1, 2)).transpose(1, 2))
        return hook(fn(x))
    q = norm(q, module.q_norm, module.hook_q_normed)
    if "k_norm" in module.submodules:
        k = norm(k, module.k_norm, module.hook_k_normed)
    return q, k


def _rotate(module: Any, q: Tensor, k: Tensor, position_embeddings: Any) -> tuple[Tensor, Tensor]:
    """Rotary embeddings over all of d_head or its leading share (GPT-NeoX-style partial rotary)."""
    if position_embeddings is None:
        return q, k
    from transformer_lens.utilities.hf_utils import get_rotary_pct_from_config
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    cos, sin = module._apply_position_embedding_hooks(position_embeddings)
    n, d_head = cos.shape[-1], q.shape[-1]
    if n * 2 == d_head and get_rotary_pct_from_config(module.config) == 1.0:  # half-width cos/sin, full rotation
        cos, sin = torch.cat([cos, cos], dim=-1), torch.cat([sin, sin], dim=-1)
    elif n < d_head:
        q_rot, k_rot = apply_rotary_pos_emb(q[..., :n], k[..., :n], cos, sin)
        return torch.cat([q_rot, q[..., n:]], dim=-1), torch.cat([k_rot, k[..., n:]], dim=-1)
    return apply_rotary_pos_emb(q, k, cos, sin)
