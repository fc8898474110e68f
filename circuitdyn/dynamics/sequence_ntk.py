"""Sequence-level eNTK: the kernel of a whole response's log-probability, as RL acts on it.

For a prompt x and a response y (sampled, or given), f(x, y) = sum_t log pi(y_t | x, y_<t). Its gradient
sums the token-level gradients, so with h_t the final normalised residual predicting y_t and
a_t = e_{y_t} - softmax(z_t):
  K_feature(i, j)  = sum_t sum_s (h_it . h_js [+ 1 with a bias]) (a_it . a_js)
  K_backbone(i, j) = <J_h(i)^T U_i, J_h(j)^T U_j>,  U_i = the rows a_it W_U   (one backward per response)
and K = K_feature + K_backbone exactly when the unembedding is not tied (else `cross` holds the rest).
At sequence level the feature part is no longer one product of a feature and a gradient kernel: it sums
such products over pairs of positions. Each response runs alone (no padding), so its positions are its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuitdyn.core.grads import requires_grad
from circuitdyn.dynamics.ntk import KernelParts, NTKError, backbone_parameters
from circuitdyn.dynamics.projection import count_sketch
from circuitdyn.models import as_bridge
from circuitdyn.models.sampling import Rollout
from circuitdyn.models.surface import SurfaceError, classifier_linear


@dataclass(frozen=True)
class SequenceNTK(KernelParts):
    feature: Float[Tensor, "N N"]
    backbone: Float[Tensor, "N N"]
    logprob: Float[Tensor, " N"]  # sum of the response's token log-probabilities
    tied: bool
    full: Float[Tensor, "N N"] | None = None  # brute force from per-sample gradients, when asked


def _rows(rollout: Rollout) -> list[tuple[Tensor, int]]:
    """Each row's tokens without padding (prompt then response) and its prompt length."""
    out = []
    for i in range(rollout.prompt_ids.shape[0]):
        prompt = rollout.prompt_ids[i][rollout.prompt_mask[i]]
        response = rollout.completion_ids[i][rollout.completion_mask[i]]
        if response.numel() == 0:
            raise NTKError(f"response {i} is empty: a sequence kernel needs at least one response token")
        out.append((torch.cat([prompt, response]), int(prompt.numel())))
    return out


def sequence_entk(model: Any, rollout: Rollout, *, brute_force: bool = False, projection: int | None = None,
                  layers: Sequence[int] | None = None, adapters_only: bool = False, seed: int = 0) -> SequenceNTK:
    """eNTK of sum_t log pi(y_t | x, y_<t) over the rollout's responses (see the module docstring);
    `projection`, `layers`, `adapters_only` and `full` as in `entk`."""
    bridge = as_bridge(model)
    with requires_grad(bridge.parameters(), True):  # also what a training stage froze
        return _sequence_entk(bridge, rollout, brute_force, projection, layers, adapters_only, seed)


def _sequence_entk(bridge: Any, rollout: Rollout, brute_force: bool, projection: int | None,
                   layers: Sequence[int] | None, adapters_only: bool, seed: int) -> SequenceNTK:
    rows = _rows(rollout)
    if len(rows) < 2:
        raise NTKError(f"the rollout has {len(rows)} response; a kernel compares responses, give at least 2")
    try:
        weight, bias = classifier_linear(bridge)
    except SurfaceError as err:
        raise NTKError(str(err)) from None
    cls_ids = {id(weight)} | ({id(bias)} if bias is not None else set())
    backbone = backbone_parameters(bridge, cls_ids, layers, adapters_only)
    params = [weight, *([bias] if bias is not None else []), *backbone]
    device = weight.device
    hs, as_, grads, full_grads, logps = [], [], [], [], []
    for ids, lp in rows:
        store: dict[str, Tensor] = {}

        def grab(x: Tensor, hook: Any, store: dict[str, Tensor] = store) -> Tensor:
            store["h"] = x
            return x
        ids = ids.to(device)[None]
        with torch.enable_grad(), bridge.hooks(fwd_hooks=[("unembed.hook_in", grab)]):
            logits = bridge(ids)
        z = logits[0, lp - 1:-1].float()  # the positions predicting the response tokens
        h = store["h"][0, lp - 1:-1]
        targets = ids[0, lp:]
        logp_all = torch.log_softmax(z, -1)
        logp = logp_all[torch.arange(targets.numel(), device=device), targets].sum()
        a = (torch.nn.functional.one_hot(targets, z.shape[-1]).float() - logp_all.exp()).detach()
        u = a @ weight.detach().float()
        g = torch.autograd.grad(h, backbone, grad_outputs=u.to(h.dtype), retain_graph=brute_force, allow_unused=True)
        grads.append(count_sketch(g, projection, seed=seed) if projection is not None else
                     torch.cat([(x if x is not None else torch.zeros_like(p)).flatten().float() for x, p in zip(g, backbone)]))
        if brute_force:
            gf = torch.autograd.grad(logp, params, allow_unused=True)
            full_grads.append(torch.cat([(x if x is not None else torch.zeros_like(p)).flatten().float()
                                         for x, p in zip(gf, params)]))
        hs.append(h.detach().float())
        as_.append(a)
        logps.append(logp.detach())
    n = len(rows)
    extra = 1.0 if bias is not None else 0.0
    feature = torch.zeros(n, n, device=device)
    for i in range(n):
        for j in range(i, n):
            feature[i, j] = feature[j, i] = ((hs[i] @ hs[j].T + extra) * (as_[i] @ as_[j].T)).sum()
    gb = torch.stack(grads)
    full = None
    if brute_force:
        gf_all = torch.stack(full_grads)
        full = gf_all @ gf_all.T
    tied = any(weight is p for p in bridge.embed.parameters())
    return SequenceNTK(feature, (gb @ gb.T).detach(), torch.stack(logps), tied, full)
