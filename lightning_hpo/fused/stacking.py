"""S copies of one network as one: parameters stacked along a new first dimension.

Pure PyTorch, no Lightning. The stacked network's state dict is the single network's,
with ``[S, ...]`` tensors, so slice ``s`` of any entry is exactly seed ``s``'s tensor and
a per-seed checkpoint is a slice away (``split_state`` / ``merge_states``).

Two ways to run the copies at once, chosen by checking against the copies themselves
(``vectorise``):

* ``"bmm"``: every parameter lives in an ``nn.Linear``; those become ``StackedLinear``
  (one ``baddbmm`` for all seeds) and the network's own forward runs on ``[S, B, ...]``
  inputs. The fastest on small networks: no per-op vmap dispatch.
* ``"vmap"``: ``torch.func.vmap`` over ``functional_call``, for any network that
  vectorises (convolutions, attention, ...).

What cannot be stacked is refused with a reason, and the caller trains the seeds one
after another: buffers updated in place (BatchNorm's running statistics), data-dependent
Python control flow, random numbers in the forward (dropout), an optimizer whose update
couples elements of a tensor (LBFGS, LAMB's trust ratio).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import nn

from lightning_hpo.errors import one_line

Mode = Literal["bmm", "vmap"]


class StackedLinear(nn.Module):
    """``S`` ``nn.Linear`` layers as one: ``weight`` is ``[S, out, in]``, ``bias`` ``[S, out]``.

    Takes ``[S, B, ..., in]`` and returns ``[S, B, ..., out]``; row ``s`` is exactly what
    linear layer ``s`` computes up to the summation order of the batched matmul.
    """

    def __init__(self, weight: nn.Parameter, bias: nn.Parameter | None):
        super().__init__()
        self.weight, self.bias = weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, out = self.weight.shape[0], self.weight.shape[1]
        flat = x.reshape(s, -1, x.shape[-1])
        if self.bias is None:
            y = torch.bmm(flat, self.weight.transpose(1, 2))
        else:
            y = torch.baddbmm(self.bias.unsqueeze(1), flat, self.weight.transpose(1, 2))
        return y.reshape(*x.shape[:-1], out)


def _set_param(root: nn.Module, name: str, value: nn.Parameter) -> None:
    owner, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(owner), leaf, value)


def stack(nets: Sequence[nn.Module], mode: Mode) -> nn.Module:
    """One copy of ``nets[0]`` holding every net's parameters stacked: ``[S, *shape]``
    under the single network's names, so its state dict splits into per-seed ones.
    For ``"bmm"`` its ``nn.Linear`` layers become ``StackedLinear``s over the same tensors."""
    body = copy.deepcopy(nets[0])
    for name, _ in nets[0].named_parameters():
        stacked = torch.stack([net.get_parameter(name).detach() for net in nets])
        _set_param(body, name, nn.Parameter(stacked))
    if mode == "bmm":
        for name, module in list(body.named_modules()):
            if type(module) is nn.Linear:
                body.set_submodule(name, StackedLinear(module.weight, module.bias))
    return body


def run_stacked(body: nn.Module, mode: Mode, x: torch.Tensor, shared: bool = False) -> torch.Tensor:
    """Every seed's output, ``[S, B, ...]``, for a stacked ``body`` (see ``stack``).

    ``x`` is ``[S, B, ...]`` (one batch per seed) or, with ``shared=True``, one ``[B, ...]``
    batch that every seed sees (validation).
    """
    n = next(body.parameters()).shape[0]
    if mode == "bmm":
        return body(x.expand(n, *x.shape) if shared else x)
    params = dict(body.named_parameters())

    def one(p: dict[str, torch.Tensor], xs: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(body, p, (xs,))

    return torch.func.vmap(one, in_dims=(0, None if shared else 0))(params, x)


def _close(a: Any, b: Any) -> bool:
    if not (torch.is_tensor(a) and torch.is_tensor(b)) or a.shape != b.shape:
        return False
    scale = float(b.detach().abs().max()) if b.numel() else 0.0
    return torch.allclose(a.detach(), b.detach(), rtol=1e-4, atol=1e-6 * max(scale, 1.0))


def vectorise(nets: Sequence[nn.Module], x: torch.Tensor) -> tuple[Mode | None, str | None]:
    """How to run ``nets`` stacked, checked on the batch ``x``: ``(mode, None)``, or
    ``(None, reason)`` when neither mode reproduces every network's own output.

    The check runs each network alone and stacked, in training mode, forward and
    backward. Random numbers in the forward make the outputs differ (or vmap refuse),
    so a network with dropout is refused rather than trained with other masks.
    """
    buffers = [name for name, _ in nets[0].named_buffers()]
    if buffers:
        return (
            None,
            f"the network has buffers it may update in place ({', '.join(buffers[:3])}), e.g. BatchNorm running statistics",
        )
    if not any(True for _ in nets[0].parameters()):
        return None, "the network has no parameters"
    with torch.no_grad():
        alone = torch.stack([net(x) for net in nets])
    modes: list[Mode] = ["vmap"]
    if all(
        type(m) is nn.Linear
        for m in nets[0].modules()
        if any(True for _ in m.parameters(recurse=False))
    ):
        modes.insert(0, "bmm")
    reason = None
    for mode in modes:
        try:
            out = run_stacked(stack(nets, mode), mode, x, shared=True)
            out.float().sum().backward()
        except Exception as exc:  # noqa: BLE001 - any failure means: not this way
            reason = f"the network cannot run vectorised ({one_line(exc, 160)})"
            continue
        if _close(out, alone):
            return mode, None
        reason = "the network's vectorised output differs from its own (random numbers in the forward, such as dropout?)"
    return None, reason


def _run_optimizer(
    factory: Callable,
    config: dict[str, Any],
    params: list[torch.Tensor],
    loss_fn: Callable[[], torch.Tensor],
    steps: int,
) -> list[torch.Tensor]:
    """``steps`` steps of a fresh ``factory`` optimizer on ``params`` (with a closure, as LBFGS needs)."""
    opt = factory(params, **config)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    for _ in range(steps):
        opt.step(closure)
    return [p.detach() for p in params]


def _stacking_agrees(
    factory: Callable,
    config: dict[str, Any],
    elementwise: Callable,
    shapes: Sequence[torch.Size],
    steps: int,
) -> bool:
    """Whether two seeds (at scales 1 and 7) end where they end alone when one optimizer
    steps their stacked tensors, the loss being ``elementwise(param, target, scale)`` summed."""
    g = torch.Generator().manual_seed(0)
    scales = torch.tensor([1.0, 7.0])
    starts = [
        torch.randn(len(scales), *shape, generator=g) * scales.reshape(-1, *[1] * len(shape))
        for shape in shapes
    ]
    targets = [
        torch.randn(len(scales), *shape, generator=g) * scales.reshape(-1, *[1] * len(shape))
        for shape in shapes
    ]
    alone = []
    for seed in range(len(scales)):
        params = [start[seed].clone().requires_grad_() for start in starts]
        ends = [target[seed] for target in targets]
        scale = scales[seed]

        def loss(params=params, ends=ends, scale=scale):  # bound now: called in this iteration
            return sum(elementwise(p, t, scale).sum() for p, t in zip(params, ends))

        alone.append(_run_optimizer(factory, config, params, loss, steps))
    stacked = [start.clone().requires_grad_() for start in starts]
    per_seed = [scales.reshape(-1, *[1] * len(shape)) for shape in shapes]
    together = _run_optimizer(
        factory,
        config,
        stacked,
        lambda: sum(elementwise(p, t, w).sum() for p, t, w in zip(stacked, targets, per_seed)),
        steps,
    )
    return all(
        _close(p[seed], ref) for seed in range(len(scales)) for p, ref in zip(together, alone[seed])
    )


# Two losses: a quadratic, and a linear one no optimizer finishes in a few steps (LBFGS
# reaches a quadratic's exact minimum whether its seeds are coupled or not).
_PROBE_LOSSES = (lambda p, t, scale: scale * (p - t).pow(2), lambda p, t, scale: scale * p * t)


def optimizer_blocker(
    factory: Callable, config: dict[str, Any], shapes: Sequence[torch.Size], steps: int = 3
) -> str | None:
    """Why one ``factory`` optimizer over stacked tensors would not update each seed as
    its own optimizer would; None when it does.

    Checked, not assumed: two seeds at different scales take ``steps`` steps alone and
    stacked. An element-wise update (SGD, Adam, AdamW, RMSprop, ...) agrees; one that
    mixes elements or tensors (LBFGS, a norm-based trust ratio) does not.
    """
    for elementwise in _PROBE_LOSSES:
        try:
            agrees = _stacking_agrees(factory, config, elementwise, shapes, steps)
        except Exception as exc:  # noqa: BLE001
            return f"its update could not be checked on stacked tensors ({one_line(exc, 160)})"
        if not agrees:
            return "its update is not element-wise: seeds stacked into one tensor would influence each other"
    return None


@torch.no_grad()
def clip_grad_norm_per_seed(params: Sequence[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Clip stacked ``[S, ...]`` gradients so each seed's total 2-norm is at most ``max_norm``,
    as ``torch.nn.utils.clip_grad_norm_`` would clip that seed's network alone; return the
    ``[S]`` norms before clipping.

    One norm over all seeds' gradients (what Lightning's clipping computes) would scale
    every seed by the others' gradients.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(0)
    seeds = grads[0].shape[0]
    norms = torch.stack(
        [torch.linalg.vector_norm(g.reshape(seeds, -1), 2.0, dim=1) for g in grads], dim=1
    )
    total = torch.linalg.vector_norm(norms, 2.0, dim=1)  # [S]
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)  # clip_grad_norm_'s own epsilon and clamp
    for g in grads:
        g.mul_(coef.to(g.dtype).reshape(seeds, *[1] * (g.ndim - 1)))
    return total


def split_state(state: dict[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
    """Seed ``index``'s state dict from a stacked one (copies, so a file holds one seed)."""
    return {k: v[index].clone() for k, v in state.items()}


def merge_states(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The stacked state dict from per-seed ones, in seed order."""
    return {k: torch.stack([s[k] for s in states]) for k in states[0]}


def split_optimizer_state(
    state: dict[str, Any], index: int, shapes: Sequence[torch.Size]
) -> tuple[dict[str, Any], dict[int, list[str]]]:
    """Seed ``index``'s optimizer state dict from one over stacked parameters, and which
    entries were sliced (``merge_optimizer_states`` needs to know).

    A state tensor shaped like its stacked parameter (moments, momentum buffers) is
    sliced; anything else (the step count, which all seeds share) is kept whole.
    """
    out: dict[str, Any] = {"param_groups": copy.deepcopy(state["param_groups"]), "state": {}}
    sliced: dict[int, list[str]] = {}
    for i, entry in state["state"].items():
        keys = [k for k, v in entry.items() if torch.is_tensor(v) and v.shape == shapes[i]]
        out["state"][i] = {k: v[index].clone() if k in keys else v for k, v in entry.items()}
        sliced[i] = keys
    return out, sliced


def merge_optimizer_states(
    states: Sequence[dict[str, Any]], sliced: dict[int, list[str]]
) -> dict[str, Any]:
    """The optimizer state dict over stacked parameters from per-seed ones."""
    merged: dict[str, Any] = {"param_groups": copy.deepcopy(states[0]["param_groups"]), "state": {}}
    for i, entry in states[0]["state"].items():
        keys = sliced.get(i, [])
        merged["state"][i] = {
            k: torch.stack([s["state"][i][k] for s in states]) if k in keys else v
            for k, v in entry.items()
        }
    return merged
