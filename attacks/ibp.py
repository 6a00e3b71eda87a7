"""IBP: Gowal, Dvijotham, Stanforth, Bunel, Qin, Uesato, Arandjelovic, Mann, Kohli, "On the
Effectiveness of Interval Bound Propagation for Training Verifiably Robust Models", 2018
(arXiv 1810.12715). A verifier (``robench.attacks.verifier``): L-infinity, untargeted, inputs in
[0, 1]. The input box ``[max(x - eps, 0), min(x + eps, 1)]`` is pushed through the network layer
by layer as an interval per activation; an image is certified when it is classified correctly
and an upper bound on ``z_j - z_y`` is below 0 for every other class ``j``.

The margin is bounded through the last linear layer ("elision", the paper's Eq. 6 and the
reference code's ``LinearSpecification(collapse=True)``): with ``[l, u]`` the box of the last
layer's input, ``c = (l + u)/2``, ``r = (u - l)/2`` and ``w = W_j - W_y``,
``z_j - z_y <= w.c + b_j - b_y + |w|.r``, which is tighter than ``u_j - l_y`` from the logits'
own boxes. Compared with ``google-deepmind/interval-bound-propagation``
(``interval_bound_propagation/src/specification.py`` and ``bounds.py``, commit 15340d3):

- same rules: affine layers in centre/radius form (``W c + b``, ``|W| r``), monotone layers
  (ReLU, max-/average-pooling, sigmoid, tanh, rounding) applied to both ends;
- an elementwise affine map (the model's own normalisation ``(x - m)/s``, an eval-mode batch
  norm) is propagated exactly as an interval (``min``/``max`` of the two mapped ends), which
  gives the same bounds as folding it into the next layer;
- deviation: certification is strict (``< 0``) where the reference counts ``<= 0``: a tie is
  not a proof; and only correctly classified images are certified (the reference's verified
  accuracy counts the margin alone, which implies it up to ties);
- bounds are computed in float32 without outward rounding (as the reference): not sound
  against floating-point error, only against the maths.

The network is read with ``torch.fx`` (no assumption about the order of submodules): every
operation of its graph must be one of the supported ones, otherwise one ``UserError`` names the
layer and the model before any bound is computed. Params: ``batch_size`` (default 1000), the
most images whose bounds are computed at once (memory cap: about three activations per image).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import Field
from torch import fx, nn
from torch.nn import functional as F

from robench.attacks.base import ATTACKS, AttackParams
from robench.attacks.verifier import Verifier
from robench.errors import UserError


@dataclass
class Box:
    """An interval per activation: ``lo <= value <= hi`` elementwise."""

    lo: torch.Tensor
    hi: torch.Tensor

    @property
    def centre(self) -> torch.Tensor:
        return (self.lo + self.hi) / 2

    @property
    def radius(self) -> torch.Tensor:
        return (self.hi - self.lo) / 2


# -- the supported operations ------------------------------------------------------------------
#: layers that are non-decreasing in every input, elementwise or per window: f(lo) <= f(hi)
MONOTONE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.Sigmoid, nn.Tanh, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.Unflatten, nn.Identity)
AFFINE_MODULES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d)
NORM_MODULES: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d)
#: functions that are non-decreasing in their first argument (the others fixed)
MONOTONE_FUNCTIONS: tuple[Callable[..., Any], ...] = (
    F.relu, torch.relu, torch.sigmoid, torch.tanh, torch.round, torch.floor, torch.ceil,
    torch.clamp, torch.clip, torch.flatten, F.max_pool2d, F.avg_pool2d)
MONOTONE_METHODS = frozenset({"relu", "sigmoid", "tanh", "round", "floor", "ceil", "clamp",
                              "clip", "view", "reshape", "flatten", "contiguous", "squeeze",
                              "unsqueeze"})
SHAPE_METHODS = frozenset({"size", "dim"})
ARITHMETIC = (operator.add, operator.sub, operator.mul, operator.truediv, operator.neg)


class _Tracer(fx.Tracer):
    """torch.fx's default tracer, but every supported module is kept whole (a leaf)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, MONOTONE_MODULES + AFFINE_MODULES + NORM_MODULES) or \
            super().is_leaf_module(m, module_qualified_name)


def _unsupported_module(module: nn.Module) -> str | None:
    """Why a module the tracer kept whole cannot be bounded here (None: it can)."""
    if isinstance(module, AFFINE_MODULES):
        mode = getattr(module, "padding_mode", "zeros")
        return None if mode == "zeros" else f"padding_mode {mode!r}"
    if isinstance(module, NORM_MODULES):
        return None if module.track_running_stats else "batch norm without running statistics"
    if isinstance(module, (nn.MaxPool1d, nn.MaxPool2d)) and module.return_indices:
        return "return_indices"
    if isinstance(module, MONOTONE_MODULES):
        return None
    return "not supported"


@dataclass(frozen=True)
class Network:
    """A model and its traced graph. Submodules and buffers are looked up in the model itself
    at every use, so the graph stays valid after ``model.to(device)`` replaces buffers."""

    model: nn.Module
    graph: fx.Graph

    @property
    def output(self) -> fx.Node:
        return next(n for n in self.graph.nodes if n.op == "output").args[0]


def trace(model: nn.Module, model_name: str) -> Network:
    """The model's graph, after checking that every operation in it is supported."""
    try:
        graph = _Tracer().trace(model)
    except Exception as err:  # noqa: BLE001 - fx raises many types; all mean "cannot read it"
        raise UserError(f"ibp cannot read model {model_name!r} as a graph (torch.fx: "
                        f"{' '.join(str(err).split())[:100]})") from None
    for node in graph.nodes:
        problem = None
        if node.op == "call_module":
            module = model.get_submodule(str(node.target))
            reason = _unsupported_module(module)
            if reason is not None:
                problem = f"layer {node.target} ({type(module).__name__}): {reason}"
        elif node.op == "call_function" and node.target not in MONOTONE_FUNCTIONS + ARITHMETIC:
            problem = f"function {getattr(node.target, '__name__', node.target)}"
        elif node.op == "call_method" and node.target not in MONOTONE_METHODS | SHAPE_METHODS:
            problem = f"method .{node.target}()"
        if problem:
            raise UserError(f"ibp does not support {problem} in model {model_name!r} "
                            "(supported: Linear, Conv1d/2d, ReLU, max/avg pooling, Flatten, "
                            "batch norm in eval mode, elementwise affine maps, monotone "
                            "functions)")
    outputs = [n for n in graph.nodes if n.op == "output"]
    if len(outputs) != 1 or not isinstance(outputs[0].args[0], fx.Node):
        raise UserError(f"ibp needs a model with one logits output; {model_name!r} returns "
                        "something else")
    return Network(model, graph)


# -- interval rules ------------------------------------------------------------------------------
def _affine(module: nn.Module, box: Box) -> Box:
    """Linear and convolution layers, in centre/radius form (the reference's rule)."""
    centre, radius = box.centre, box.radius
    mid = module(centre)
    weight = module.weight.abs()
    if isinstance(module, nn.Linear):
        rad = F.linear(radius, weight)
    else:
        conv = F.conv1d if isinstance(module, nn.Conv1d) else F.conv2d
        rad = conv(radius, weight, None, module.stride, module.padding, module.dilation,
                   module.groups)
    return Box(mid - rad, mid + rad)


def _elementwise(box: Box, scale: torch.Tensor | float, shift: torch.Tensor | float = 0.0
                 ) -> Box:
    """``scale * x + shift`` for a constant (broadcast) scale of any sign: exact."""
    a, b = box.lo * scale, box.hi * scale
    return Box(torch.minimum(a, b) + shift, torch.maximum(a, b) + shift)


def _batch_norm(module: nn.Module, box: Box) -> Box:
    """Eval-mode batch norm: a per-channel affine map with the running statistics."""
    scale = torch.rsqrt(module.running_var + module.eps)
    if module.weight is not None:
        scale = scale * module.weight
    shift = -module.running_mean * scale
    if module.bias is not None:
        shift = shift + module.bias
    shape = (1, -1) + (1,) * (box.lo.dim() - 2)
    return _elementwise(box, scale.reshape(shape), shift.reshape(shape))


def _arithmetic(op: Callable[..., Any], args: tuple[Any, ...], node: fx.Node) -> Box:
    """``+ - * /`` with at least one interval operand."""
    if op is operator.neg:
        return Box(-args[0].hi, -args[0].lo)
    a, b = args
    if op is operator.add:
        if isinstance(a, Box) and isinstance(b, Box):
            return Box(a.lo + b.lo, a.hi + b.hi)
        box, const = (a, b) if isinstance(a, Box) else (b, a)
        return Box(box.lo + const, box.hi + const)
    if op is operator.sub:
        if isinstance(a, Box) and isinstance(b, Box):
            return Box(a.lo - b.hi, a.hi - b.lo)
        if isinstance(a, Box):
            return Box(a.lo - b, a.hi - b)
        return Box(a - b.hi, a - b.lo)
    if op is operator.mul and not (isinstance(a, Box) and isinstance(b, Box)):
        box, const = (a, b) if isinstance(a, Box) else (b, a)
        return _elementwise(box, const)
    if op is operator.truediv and isinstance(a, Box) and not isinstance(b, Box):
        lo, hi = a.lo / b, a.hi / b
        return Box(torch.minimum(lo, hi), torch.maximum(lo, hi))
    raise UserError(f"ibp does not support {node.name} ({op.__name__} of two bounded values)")


def _either(value: Any, end: str) -> Any:
    return getattr(value, end) if isinstance(value, Box) else value


def _run_node(net: Network, node: fx.Node, args: tuple[Any, ...],
              kwargs: dict[str, Any]) -> Any:
    """The value of one node: a Box when any input is one, else the plain value."""
    bounded = any(isinstance(v, Box) for v in (*args, *kwargs.values()))
    if node.op == "call_module":
        module = net.model.get_submodule(str(node.target))
        if not bounded:
            return module(*args, **kwargs)
        if isinstance(module, AFFINE_MODULES):
            return _affine(module, args[0])
        if isinstance(module, NORM_MODULES):
            return _batch_norm(module, args[0])
        return Box(module(args[0].lo), module(args[0].hi))
    if node.op == "call_function":
        if not bounded:
            return node.target(*args, **kwargs)
        if node.target in ARITHMETIC:
            return _arithmetic(node.target, args, node)
        rest = args[1:]
        if not isinstance(args[0], Box) or any(isinstance(v, Box) for v in
                                               (*rest, *kwargs.values())):
            raise UserError(f"ibp does not support {node.name}: a bounded value is not its "
                            "first argument")
        return Box(node.target(args[0].lo, *rest, **kwargs),
                   node.target(args[0].hi, *rest, **kwargs))
    if node.op == "call_method":
        self_, rest = args[0], args[1:]
        if node.target in SHAPE_METHODS:
            return getattr(_either(self_, "lo"), str(node.target))(*rest, **kwargs)
        if not bounded:
            return getattr(self_, str(node.target))(*rest, **kwargs)
        if not isinstance(self_, Box) or any(isinstance(v, Box) for v in
                                             (*rest, *kwargs.values())):
            # one value for both ends of a bounded argument would make the bounds too tight
            raise UserError(f"ibp does not support {node.name}: a bounded value is an argument "
                            f"of .{node.target}(), not the value it is called on")
        return Box(getattr(self_.lo, str(node.target))(*rest, **kwargs),
                   getattr(self_.hi, str(node.target))(*rest, **kwargs))
    raise AssertionError(f"unexpected node {node.op}")


def _bounds_until(net: Network, box: Box, stop: fx.Node | None) -> dict[fx.Node, Any]:
    """Interpret the graph on intervals, node by node, up to (not including) ``stop``."""
    env: dict[fx.Node, Any] = {}
    for node in net.graph.nodes:
        if node is stop or node.op == "output":
            break
        if node.op == "placeholder":
            env[node] = box
        elif node.op == "get_attr":
            value: Any = net.model
            for part in str(node.target).split("."):
                value = getattr(value, part)
            env[node] = value
        else:
            args = fx.node.map_arg(node.args, env.__getitem__)
            kwargs = fx.node.map_arg(node.kwargs, env.__getitem__)
            env[node] = _run_node(net, node, args, kwargs)
    return env


def logit_box(net: Network, lo: torch.Tensor, hi: torch.Tensor) -> Box:
    """Interval bounds on every logit (no elision; for tests and the naive margin)."""
    value = _bounds_until(net, Box(lo, hi), None)[net.output]
    return value if isinstance(value, Box) else Box(value, value)


def margin_upper_bounds(net: Network, lo: torch.Tensor, hi: torch.Tensor,
                        y: torch.Tensor) -> torch.Tensor:
    """Upper bounds (batch, classes) on ``z_j - z_y`` over the box, through the last linear
    layer when the logits come straight out of one (elision), else ``u_j - l_y``. Differentiable
    (certified training back-propagates through it); 0 at ``j = y``."""
    out = net.output
    last = net.model.get_submodule(str(out.target)) if out.op == "call_module" else None
    if isinstance(last, nn.Linear) and len(out.args) == 1 and not out.kwargs:
        env = _bounds_until(net, Box(lo, hi), out)
        feature = env[out.args[0]]
        if isinstance(feature, Box) and feature.lo.dim() == 2:
            w = last.weight[None] - last.weight[y][:, None]           # (batch, K, F)
            upper = torch.einsum("bkf,bf->bk", w, feature.centre) \
                + torch.einsum("bkf,bf->bk", w.abs(), feature.radius)
            if last.bias is not None:
                upper = upper + last.bias[None] - last.bias[y][:, None]
            return upper
    box = logit_box(net, lo, hi)
    upper = box.hi - box.lo.gather(1, y[:, None])
    return upper.scatter(1, y[:, None], 0.0)


def worst_case_logits(net: Network, x: torch.Tensor, y: torch.Tensor,
                      eps: float) -> torch.Tensor:
    """The reference's "verified" logits at radius eps: the margin bounds with 0 at the true
    class, so ``CE(worst_case_logits, y)`` is the IBP training loss (``loss.py``: the bounds
    concatenated with a zero logit for the label)."""
    lo, hi = (x - eps).clamp(0.0, 1.0), (x + eps).clamp(0.0, 1.0)
    return margin_upper_bounds(net, lo, hi, y)


class IBPParams(AttackParams):
    batch_size: int = Field(1000, ge=1)   # memory cap: images bounded at once


@ATTACKS.register("ibp")
class IBP(Verifier):
    """Interval bound propagation (Gowal et al. 2018): verified accuracy, a lower bound."""

    Params = IBPParams

    @classmethod
    def check_model(cls, model: nn.Module, model_name: str, params: Any) -> None:
        net = trace(model, model_name)
        # one bound pass on a 28x28 grey box finds operations that only fail on intervals
        # (e.g. the product of two bounded values); a model for other input shapes is left to
        # the run (any error but a UserError means the trial input did not fit)
        try:
            logit_box(net, torch.zeros(1, 1, 28, 28), torch.ones(1, 1, 28, 28))
        except UserError:
            raise
        except Exception:  # noqa: BLE001 - a shape the trial input does not have
            pass

    def margin_bounds(self, lo: torch.Tensor, hi: torch.Tensor, y: torch.Tensor
                      ) -> torch.Tensor:
        net = getattr(self, "_net", None)
        if net is None:
            net = self._net = trace(self.model, type(self.model).__name__)
        return margin_upper_bounds(net, lo, hi, y)


__all__ = ["IBP", "Box", "Network", "logit_box", "margin_upper_bounds", "trace",
           "worst_case_logits"]
