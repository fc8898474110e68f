"""Empirical NTK of the chosen-token log-probability, split into a feature part and a backbone part.

For a probe sample x with chosen next token y, f(x) = log pi(y|x) = log softmax(W_U h(x) + b_U)_y, with
h(x) the final normalised residual at the predicting position. Its parameter gradient has two blocks:
  classifier:  df/dW_U = a(x) h(x)^T,  df/db_U = a(x),   with a(x) = e_y - softmax(z(x))
  backbone:    df/dtheta_b = J_h(x)^T W_U^T a(x)
so K(x, x') = <df(x), df(x')> = K_feature + K_backbone with
  K_feature(x, x')  = (h(x).h(x') + [b_U]) * a(x).a(x')
  K_backbone(x, x') = (J_h(x)^T u(x)) . (J_h(x')^T u(x')),  u = W_U^T a   (one backward per sample)
The split is exact when the unembedding is not tied to the embedding; for tied models the gradient of
the shared matrix also flows through the embedding, and `cross` (= full - feature - backbone, computed
from per-sample gradients when asked) holds that remainder.

The paper's "two components" read two ways, and both are exposed:
  additive:  K = K_feature (the classifier's own gradients) + K_backbone (`feature`, `backbone`);
  product:   K_feature = H * A, the feature kernel H(x, x') = h(x).h(x') [+ 1 for the bias] ("limited
             variability of the features" is a statement about H) times the gradient kernel
             A(x, x') = a(x).a(x') ("shaping the classifier" acts on a = e_y - softmax(z), so on A)
             (`feature_kernel`, `gradient_kernel`).

One-step prediction: after SGD with learning rate eta on the loss -A log pi(y|x) (a policy-gradient step
with advantage A), log pi(y'|x') changes by eta * A * K(x', x) to first order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuitdyn.core.grads import requires_grad
from circuitdyn.dynamics.projection import count_sketch
from circuitdyn.models import as_bridge
from circuitdyn.models.lora import is_lora_layer
from circuitdyn.models.surface import SurfaceError, classifier_linear
from circuitdyn.tasks.base import PairBatch


class NTKError(ValueError):
    """A probe set or model the eNTK cannot be computed for; the message names the fix."""


class KernelParts:
    """total = feature + backbone; cross = what a brute-force kernel holds beyond them (tied models)."""

    feature: Tensor
    backbone: Tensor
    full: Tensor | None

    @property
    def total(self) -> Tensor:
        return self.feature + self.backbone

    @property
    def cross(self) -> Tensor | None:
        return None if self.full is None else self.full - self.total


@dataclass(frozen=True)
class NTKDecomposition(KernelParts):
    feature: Float[Tensor, "N N"]
    backbone: Float[Tensor, "N N"]
    features: Float[Tensor, "N d"]  # h(x): final normalised residual at the predicting position
    logprob: Float[Tensor, " N"]  # log pi(y|x)
    tied: bool  # the unembedding shares its matrix with the embedding
    feature_kernel: Float[Tensor, "N N"]  # H = h.h' (+ 1 with a bias): how alike the features are
    gradient_kernel: Float[Tensor, "N N"]  # A = a.a', a = e_y - softmax(z): the classifier's gradient factor
    full: Float[Tensor, "N N"] | None = None  # brute force from per-sample gradients, when asked

    def summary(self) -> dict[str, float]:
        """Scalars for time series: mean diagonal of each part and the feature share of the trace."""
        f, b = torch.diagonal(self.feature).mean(), torch.diagonal(self.backbone).mean()
        return {"ntk_feature_diag": float(f), "ntk_backbone_diag": float(b),
                "ntk_feature_share": float(f / (f + b)) if float(f + b) > 0 else float("nan"),
                "ntk_feature_kernel_diag": float(torch.diagonal(self.feature_kernel).mean()),
                "ntk_gradient_kernel_diag": float(torch.diagonal(self.gradient_kernel).mean())}


def entk(model: Any, batch: PairBatch, *, brute_force: bool = False, memory_budget: int = 2 * 2**30,
         projection: int | None = None, layers: Sequence[int] | None = None, adapters_only: bool = False,
         seed: int = 0) -> NTKDecomposition:
    """eNTK of log pi(answer | clean prompt) over the probe batch (first answer token, at answer_pos).

    `projection=k` estimates the backbone part from CountSketches of the per-sample gradients (k numbers
    per sample, `projection.py`), for models whose N gradients do not fit; `layers` restricts the backbone
    part to the parameters of those blocks; `adapters_only` (a LoRA model) to its adapters, the parameters
    LoRA training moves (the feature part is exact either way). With `brute_force`, `full` is the Gram
    matrix of per-sample gradients over the classifier and the same backbone parameters."""
    # the kernel differentiates every parameter, also those a training stage froze (CF-RL stage 1)
    with requires_grad(as_bridge(model).parameters(), True):
        return _entk(model, batch, brute_force=brute_force, memory_budget=memory_budget, projection=projection,
                     layers=layers, adapters_only=adapters_only, seed=seed)


def backbone_parameters(bridge: Any, classifier: set[int], layers: Sequence[int] | None,
                        adapters_only: bool = False) -> list[torch.nn.Parameter]:
    """Every parameter but the classifier's, or those of the given blocks; with `adapters_only`, only
    those of LoRA adapters (each once)."""
    if layers is None:
        scopes = [bridge]
    else:
        n_layers = len(bridge.blocks)
        bad = [layer for layer in layers if not (isinstance(layer, int) and 0 <= layer < n_layers)]
        if bad or not layers:
            raise NTKError(f"layers must be block indices in [0, {n_layers}), got {list(layers)!r}")
        scopes = [bridge.blocks[layer] for layer in sorted(set(layers))]
    if adapters_only:
        adapters = [m for scope in scopes for m in scope.modules() if is_lora_layer(m)]
        if not adapters:
            where = "" if layers is None else f" in blocks {sorted(set(layers))}"
            raise NTKError(f"adapters_only: the model has no LoRA adapters{where}; adapt it first (TrainConfig.peft "
                           "or circuitdyn.models.lora.apply_lora), or leave adapters_only off")
        found = [p for m in adapters for part in (m.lora_A, m.lora_B) for p in part.parameters()]
    else:
        found = [p for scope in scopes for p in scope.parameters()]
    unique = {id(p): p for p in found if id(p) not in classifier}
    return list(unique.values())


def _entk(model: Any, batch: PairBatch, *, brute_force: bool, memory_budget: int, projection: int | None,
          layers: Sequence[int] | None, adapters_only: bool, seed: int) -> NTKDecomposition:
    bridge = as_bridge(model)
    n = len(batch)
    if n < 2:
        raise NTKError(f"the probe set has {n} sample; a kernel compares samples, give at least 2")
    try:
        weight, bias = classifier_linear(bridge)
    except SurfaceError as err:
        raise NTKError(str(err)) from None
    cls_ids = {id(weight)} | ({id(bias)} if bias is not None else set())
    backbone = backbone_parameters(bridge, cls_ids, layers, adapters_only)
    params = [weight, *([bias] if bias is not None else []), *backbone]
    n_back = sum(p.numel() for p in backbone)
    kept = n_back * n if projection is None else n_back + projection * n  # one sample's gradient, N sketches
    need = 4 * (kept + (sum(p.numel() for p in params) * n if brute_force else 0))
    if need > memory_budget:
        raise NTKError(f"the eNTK needs ~{need / 2**20:.0f} MiB of per-sample gradients ({n} samples x {n_back} backbone "
                       f"parameters); raise memory_budget (now {memory_budget / 2**20:.0f} MiB), use fewer probe samples, "
                       "a random projection (projection=k) or a subset of layers (layers=[...])")
    tied = any(weight is p for p in bridge.embed.parameters())
    device = weight.device
    rows = torch.arange(n, device=device)
    store: dict[str, Tensor] = {}

    def grab(x: Tensor, hook: Any) -> Tensor:
        store["h"] = x
        return x

    ids, mask, pos = batch.clean.to(device), batch.mask.to(device).long(), batch.answer_pos.to(device)
    answers = batch.answers[:, 0].to(device)
    with torch.enable_grad(), bridge.hooks(fwd_hooks=[("unembed.hook_in", grab)]):
        logits = bridge(ids, attention_mask=mask)
    z = logits[rows, pos].float()
    h = store["h"][rows, pos]
    logp_all = torch.log_softmax(z, -1)
    logprob = logp_all[rows, answers]
    a = (torch.nn.functional.one_hot(answers, z.shape[-1]).float() - logp_all.exp()).detach()
    hd = h.detach().float()
    feature_kernel = hd @ hd.T + (1.0 if bias is not None else 0.0)
    gradient_kernel = a @ a.T
    feature = feature_kernel * gradient_kernel
    # backbone: one vector-Jacobian product per sample, u = W_U^T a through h (classifier held fixed)
    u = a @ weight.detach().float()  # [N, d]; W_U is [V, d]
    grads = []
    for i in range(n):
        g = torch.autograd.grad(h[i], backbone, grad_outputs=u[i].to(h.dtype), retain_graph=True, allow_unused=True)
        grads.append(count_sketch(g, projection, seed=seed) if projection is not None else
                     torch.cat([(x if x is not None else torch.zeros_like(p)).flatten().float() for x, p in zip(g, backbone)]))
    gb = torch.stack(grads)
    backbone_k = gb @ gb.T
    full = None
    if brute_force:
        per = []
        for i in range(n):
            g = torch.autograd.grad(logprob[i], params, retain_graph=True, allow_unused=True)
            per.append(torch.cat([(x if x is not None else torch.zeros_like(p)).flatten().float() for x, p in zip(g, params)]))
        gf = torch.stack(per)
        full = gf @ gf.T
    return NTKDecomposition(feature.detach(), backbone_k.detach(), hd, logprob.detach(), tied, feature_kernel,
                            gradient_kernel, full)


def predicted_logprob_change(decomposition: NTKDecomposition, source: int, lr: float, advantage: float) -> Tensor:
    """First-order change of log pi(y'|x') for every probe x' after one SGD step of size lr on
    -advantage * log pi(y|x_source)."""
    return lr * advantage * decomposition.total[:, source]


def feature_variability(features: Float[Tensor, "N d"]) -> dict[str, float]:
    """Spread of h over the probe set: total variance, effective rank (exp of the entropy of the normalised
    singular values of the centred features) and mean pairwise cosine similarity."""
    if features.shape[0] < 2:
        raise NTKError("feature variability needs at least 2 probe samples")
    x = features.double()
    c = x - x.mean(0, keepdim=True)
    s = torch.linalg.svdvals(c)
    p = s / s.sum() if float(s.sum()) > 0 else s
    eff = float(torch.exp(-(p[p > 0] * torch.log(p[p > 0])).sum())) if float(s.sum()) > 0 else 0.0
    unit = x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)
    cos = unit @ unit.T
    n = x.shape[0]
    mean_cos = float((cos.sum() - cos.diagonal().sum()) / (n * (n - 1)))
    return {"feature_total_variance": float((c**2).sum() / (n - 1)), "feature_effective_rank": eff,
            "feature_mean_cosine": mean_cos}
