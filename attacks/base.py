"""The attack base class: owns the surroundings so a plugin writes only its math.

Like torchattacks' ``Attack``, the base sets the model to eval mode (and restores it), keeps
inputs in the valid range [0, 1], projects onto the eps-ball of the attack's threat model
(``norm``: ``linf``, the default, or ``l2``; eps given in input scale, never 0-255), draws the
random starts, and computes input gradients without leaking gradients into the model's
parameters. A plugin subclasses ``Attack``, declares a pydantic ``Params`` model and
its traits (``family``, ...), and implements ``perturb(x, y, eps)``.

Traits are what the harness asks of an attack instead of testing its name: the checks and the
leaderboard treat every ``single_step`` attack as they treat FGSM, every ``iterative`` one as
they treat PGD, and so on, so a third-party attack gets the checks of its family.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer
from torch import nn
from torch.nn import functional as F

from robench.eps import eps_text
from robench.models import eval_mode, output_classes
from robench.registry import Registry
from robench.seeds import derive_seed
from robench.work import Work

#: single_step: one gradient step (FGSM); iterative: many gradient steps (PGD); ensemble: a
#: fixed ensemble of strong attacks (AutoAttack); black_box: never reads gradients (Square);
#: transfer: crafted on another model of the suite, never reads the target's gradients;
#: verifier: proves robustness instead of attacking (IBP; see ``robench.attacks.verifier``)
Family = Literal["single_step", "iterative", "ensemble", "black_box", "transfer", "verifier"]
#: the threat model: ``linf`` (max |delta_i| <= eps) or ``l2`` (||delta||_2 <= eps, per image)
Norm = Literal["linf", "l2"]
#: robench's norm names as torchattacks spells them
TORCHATTACKS_NORM: dict[str, str] = {"linf": "Linf", "l2": "L2"}
#: the default threat model of every attack (and of an attack with no ``norm`` param)
DEFAULT_NORM: Norm = "linf"


class AttackParams(BaseModel):
    """Base for every attack's parameter schema: unknown keys and wrong types are rejected."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class EOTParams(AttackParams):
    """Base of a gradient attack's params: ``eot_samples`` (EOT, Athalye, Engstrom, Ilyas,
    Kwok, ICML 2018, arXiv 1707.07397; Athalye, Carlini, Wagner 2018, section 4.3): every input
    gradient is the mean of ``eot_samples`` gradients from as many forward passes, the
    expectation over a randomized defense's randomness. 1 (the default) is the plain gradient,
    and is left out of the canonical params, so params without EOT are recorded as before."""

    eot_samples: int = Field(1, ge=1)

    @model_serializer(mode="wrap")
    def _omit_default_eot(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if isinstance(data, dict) and data.get("eot_samples") == 1:
            data.pop("eot_samples")
        return data


def logits_and_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                        samples: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and the gradient of the summed cross-entropy w.r.t. the input (one forward and
    one backward; parameters' ``.grad`` untouched). With ``samples`` k > 1 (EOT) both are the
    means over k forward/backward passes; k = 1 is one pass, unchanged arithmetic."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), x,
                                      only_inputs=True)
        if samples == 1:
            return logits.detach(), grad
        logits = logits.detach()
        for _ in range(samples - 1):
            more = model(x)
            (g,) = torch.autograd.grad(F.cross_entropy(more, y, reduction="sum"), x,
                                       only_inputs=True)
            logits, grad = logits + more.detach(), grad + g
    return logits / samples, grad / samples


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   samples: int = 1) -> torch.Tensor:
    """Gradient of the summed cross-entropy w.r.t. the input only (parameters' ``.grad``
    untouched); with ``samples`` k > 1 the mean of k gradients (EOT)."""
    return logits_and_gradient(model, x, y, samples)[1]


@contextlib.contextmanager
def own_rng(device: torch.device) -> Iterator[None]:
    """Run library code that reseeds torch's global generator without changing the caller's
    random stream (torchattacks' AutoAttack components and Square call ``manual_seed``)."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        yield


def l2_norms(t: torch.Tensor) -> torch.Tensor:
    """Per-image L2 norms of a batch, shaped to broadcast against it (B, 1, 1, ...)."""
    return t.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (t.dim() - 1)))


def l2_normalize(g: torch.Tensor) -> torch.Tensor:
    """Per-image g / ||g||_2 (a zero gradient stays zero: no step instead of NaN)."""
    return g / l2_norms(g).clamp_min(1e-12)


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float,
            norm: Norm = DEFAULT_NORM) -> torch.Tensor:
    """Project onto the eps-ball around x (``norm``: L-inf or L2) and onto [0, 1].

    L2 (as torchattacks' ``PGDL2`` and ART): delta is scaled by ``min(1, eps / ||delta||_2)``
    per image, then clamped to [0, 1]. The clamp never increases ||delta||_2 (x is in [0, 1], so
    clamping x + delta only moves each coordinate of delta towards 0), so the result is in both
    sets.
    """
    if norm == "linf":
        return torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)
    if norm == "l2":
        delta = x_adv - x
        factor = (eps / l2_norms(delta).clamp_min(1e-12)).clamp_(max=1.0)
        return (x + delta * factor).clamp_(0.0, 1.0)
    raise ValueError(f"unknown norm {norm!r}")


class Attack:
    """Base of every attack plugin (untargeted, true labels, inputs in [0, 1]; L-inf unless
    the plugin's params have ``norm: l2``).

    Args:
        model: the (defended) model under attack; inputs in [0, 1], logits out.
        params: an instance of the subclass's ``Params`` (validated by the suite schema).
        seed: seeds the attack's own random generator (random starts), so runs repeat.
    """

    Params: ClassVar[type[AttackParams]] = AttackParams
    #: what kind of attack this is (see ``Family``); checks and the leaderboard ask this
    family: ClassVar[Family] = "iterative"
    #: True when one sweep over several eps shares work (FGSM: one gradient for all eps).
    shares_work_across_eps: ClassVar[bool] = False
    #: allowed |native - backend| accuracy difference per reference backend; 0 means the
    #: backend must agree exactly (a failed check, not a warning, when it does not)
    backend_tolerance: ClassVar[dict[str, float]] = {}
    #: params that always appear in an automatic label when they differ from their default
    #: (a reduced variant must never pass for the real thing: ``autoattack[version=fast]``)
    label_params: ClassVar[tuple[str, ...]] = ()
    #: True when the examples are crafted on another defense's model of the suite (transfer):
    #: the plan resolves ``source_label`` to a defense and the runner calls ``set_source``
    needs_source_model: ClassVar[bool] = False
    #: the registered attack whose random starts this one shares (its seed is derived from
    #: that name and the same params): BPDA starts where PGD starts, so the two differ only
    #: in the gradient they follow
    random_starts_of: ClassVar[str | None] = None

    def __init__(self, model: nn.Module, params: AttackParams | None = None, seed: int = 0) -> None:
        self.model = model
        self.params = params if params is not None else self.Params()
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)  # CPU: same noise on every device
        self._num_classes: int | None = None
        self._image_ids: list[int] | None = None
        self._draws: dict[float, int] = {}

    # -- traits read from params (override when a plugin has such params) ------------------
    @classmethod
    def gradient_based(cls) -> bool:
        """Whether the attack reads the attacked model's gradients."""
        return cls.family not in ("black_box", "transfer")

    @classmethod
    def budget(cls, params: Any) -> int:
        """Gradient steps (or queries) per image: a larger budget should not be weaker."""
        return 1

    @classmethod
    def work_per_image(cls, params: Any, eps: float) -> Work:
        """Image passes per image at ``eps``, for time estimates (``robench plan``): an upper
        bound, since an attack that stops on fooled images costs less. By default ``budget``
        input gradients; a ``black_box`` attack's budget is forward queries; a ``verifier``'s
        interval bounds cost about two forwards (centre and radius)."""
        if cls.family == "black_box":
            return Work(forward=cls.budget(params))
        if cls.family == "verifier":
            return Work(forward=2)
        return Work(grad=cls.budget(params) * getattr(params, "eot_samples", 1))

    @classmethod
    def backend(cls, params: Any) -> str:
        """Which implementation computes the examples (``native`` = robench's own)."""
        return str(getattr(params, "backend", "native"))

    @classmethod
    def norm_of(cls, params: Any) -> Norm:
        """The threat model of these params (an attack without a ``norm`` param is L-inf)."""
        return getattr(params, "norm", DEFAULT_NORM)

    @property
    def norm(self) -> Norm:
        return self.norm_of(self.params)

    @property
    def eot_samples(self) -> int:
        """Forward passes each input gradient averages (EOT); 1 without an ``eot_samples``
        param."""
        return int(getattr(self.params, "eot_samples", 1))

    def input_gradient(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The input gradient every gradient attack steps along: of the summed cross-entropy
        of the attacked model, averaged over ``eot_samples`` forward passes (EOT)."""
        return input_gradient(self.model, x, y, self.eot_samples)

    @classmethod
    def reduced_variant(cls, params: Any) -> str | None:
        """If these params make a weaker variant of the published attack, a short marker of it
        (``version=fast``) that must appear in its label; else None."""
        return None

    @classmethod
    def code_dependencies(cls, params: Any) -> list[object]:
        """Plugins this attack looks up by name at run time (transfer's crafting attack): their
        source joins the cells' code hash, as ``Defense.code_dependencies`` does for models."""
        return []

    @classmethod
    def source_label(cls, params: Any) -> str | None:
        """For ``needs_source_model`` attacks: the label of the defense whose model crafts the
        examples; None means the suite's undefended entry (the ``none`` plugin's)."""
        return None

    def set_source(self, model: nn.Module) -> None:
        """Hand a ``needs_source_model`` attack the source defense's model (the runner)."""
        raise TypeError(f"{type(self).__name__} does not craft on a source model")

    # -- what a plugin writes -------------------------------------------------------------
    def perturb(self, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        raise NotImplementedError

    # -- what the base owns ---------------------------------------------------------------
    def __call__(self, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        """Adversarial examples for (x, y) within ``eps``; eps 0 returns x unchanged."""
        x = x.detach()
        if eps == 0:
            return x.clone()
        params = list(self.model.parameters())
        saved_grads = [p.grad for p in params]
        with eval_mode(self.model):
            x_adv = self.perturb(x, y, float(eps))
        # library attacks (torchattacks' AutoAttack) call loss.backward(): undo what they leave
        for param, grad in zip(params, saved_grads, strict=True):
            param.grad = grad
        if x_adv.shape != x.shape:
            raise RuntimeError(f"{type(self).__name__}.perturb returned shape "
                               f"{tuple(x_adv.shape)} for inputs of shape {tuple(x.shape)}")
        return project(x_adv.detach(), x, float(eps), self.norm)

    def sweep(self, x: torch.Tensor, y: torch.Tensor,
              eps_list: Sequence[float]) -> Iterator[tuple[float, torch.Tensor]]:
        """Adversarial examples at each eps; attacks that can share work override this."""
        for eps in eps_list:
            yield eps, self(x, y, eps)

    def num_classes(self, x: torch.Tensor) -> int:
        """The model's number of classes (one forward pass, the first time)."""
        if self._num_classes is None:
            self._num_classes = output_classes(self.model, x)
        return self._num_classes

    def set_images(self, image_ids: Sequence[int] | None) -> None:
        """Name the images of the next batch (their dataset indices): random draws are then
        per image, so an image gets the same random start whatever batch, subset or eps list
        it is attacked in (the evaluation loop calls this before each batch)."""
        self._image_ids = None if image_ids is None else [int(i) for i in image_ids]
        self._draws = {}

    def uniform_noise(self, like: torch.Tensor, eps: float) -> torch.Tensor:
        """Uniform noise in [-eps, eps]: per image from ``(seed, eps, draw, image id)`` when
        the images are named (``set_images``), else from the attack's seeded generator. The
        k-th draw at an eps (a restart) differs from the previous ones."""
        if self._image_ids is None or len(self._image_ids) != like.shape[0]:
            noise = torch.rand(like.shape, generator=self.generator, dtype=like.dtype)
        else:
            noise = torch.stack([torch.rand(like.shape[1:], dtype=like.dtype, generator=gen)
                                 for gen in self._image_generators(eps)])
        return noise.mul_(2 * eps).sub_(eps).to(like.device)

    def random_start(self, like: torch.Tensor, eps: float) -> torch.Tensor:
        """A random start in the eps-ball of the attack's norm, drawn as ``uniform_noise``
        (per image when the images are named). L-inf: uniform in the cube. L2: as torchattacks'
        ``PGDL2`` (``random_start``), a Gaussian direction scaled to radius ``eps * u`` with
        u ~ U[0, 1]; NOT uniform in the ball (ART draws uniformly in the ball, which in 784
        dimensions puts almost every start on the sphere; the robustness library starts on
        the sphere)."""
        if self.norm == "linf":
            return self.uniform_noise(like, eps)
        if self._image_ids is None or len(self._image_ids) != like.shape[0]:
            direction = torch.randn(like.shape, generator=self.generator, dtype=like.dtype)
            radius = torch.rand(like.shape[0], generator=self.generator, dtype=like.dtype)
        else:
            gens = self._image_generators(eps)
            direction = torch.stack([torch.randn(like.shape[1:], dtype=like.dtype, generator=g)
                                     for g in gens])
            radius = torch.cat([torch.rand(1, dtype=like.dtype, generator=g) for g in gens])
        radius = radius.view(-1, *([1] * (like.dim() - 1)))
        return (l2_normalize(direction) * (eps * radius)).to(like.device)

    def _image_generators(self, eps: float) -> list[torch.Generator]:
        """One generator per named image, seeded by ``(seed, eps, draw, image id)``; the k-th
        call at an eps (a restart) gives new seeds."""
        assert self._image_ids is not None
        draw = self._draws.get(eps, 0)
        self._draws[eps] = draw + 1
        key = eps_text(eps)
        return [torch.Generator().manual_seed(derive_seed(self.seed, key, draw, image))
                for image in self._image_ids]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"


ATTACKS: Registry[type[Attack]] = Registry("attack", entry_point_group="robench.attacks",
                                           base=Attack)

__all__ = ["ATTACKS", "DEFAULT_NORM", "TORCHATTACKS_NORM", "Attack", "AttackParams", "EOTParams",
           "Family", "Norm", "eval_mode", "input_gradient", "l2_normalize", "l2_norms",
           "logits_and_gradient", "own_rng", "project"]
