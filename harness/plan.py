"""Resolve once: a validated suite becomes a typed run plan.

``resolve(suite, source)`` looks every plugin up by its registered name, validates its params
with the plugin's own schema (canonical: defaults filled in, nested params included), gives
every entry a label (explicit ``label`` wins; a plugin listed twice is named by the params
that tell its entries apart, e.g. ``unlearning[method=ssd]``), derives its seed from the suite
seed and its label (never its position) and hashes the code that will produce its numbers. The
runner, the cache, resume and the checks consume the plan; nothing downstream parses params
again. Every problem is a ``UserError`` naming the file and key path.

Seeds: a suite runs once per seed of ``Suite.seed_list`` (``seed: N`` or ``seeds: [..]``); a
``Plan`` is the plan of one of them (``plan.seed``, the first by default; ``plan.for_seed(s)``
gives another, with its own seeds and cache keys). Within one seed, the baseline and every
defense use that seed itself (common random numbers: all
unlearning methods see the same forget samples, so their differences are theirs); each attack
uses ``derive_seed(seed, "attack", name, canonical params)``, from what it is rather than from
its label or position (the same random starts against every defense, and adding another entry
changes no existing entry's numbers; per-image draws: ``Attack.uniform_noise``); an attack with
``random_starts_of`` (BPDA: ``pgd``) uses that name instead, so it starts where that attack does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from pydantic import BaseModel, ValidationError
from torch import nn

import robench
from robench.adaptive import escalate
from robench.attacks import ATTACKS, Attack, AttackParams
from robench.attacks.base import DEFAULT_NORM
from robench.cache import CacheKey, cache_key
from robench.config import AttackEntry, Suite, load_suite, parse_suite, raise_validation
from robench.data import DATASETS
from robench.defenses import DEFENSES, Defense, DefenseParams
from robench.engine import Engine, policy_text
from robench.eps_limits import EpsWarning as EpsWarning  # re-exported: robench.plan.EpsWarning
from robench.eps_limits import check_eps
from robench.errors import UserError
from robench.evaluation import evaluate_attack
from robench.labels import unique_labels
from robench.models import MODELS, LogitsKey, SelectOutput
from robench.plan_hash import code_hash
from robench.seeds import derive_seed
from robench.training import TrainConfig, train
from robench.weights import WeightsFile, size_limit, weights_file

if TYPE_CHECKING:
    from robench.attacks.verifier import Verifier


def params_json(params: BaseModel | dict[str, Any]) -> str:
    """Canonical JSON of a params object (the same params always give the same text)."""
    if isinstance(params, BaseModel):
        params = params.model_dump(mode="json")
    return json.dumps(params, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class BaselineSpec:
    """The trained model every defense starts from."""

    dataset: str
    model: str
    model_cls: type[nn.Module]
    train: TrainConfig
    seed: int
    code_hash: str
    key: CacheKey                           # the inputs that determine the trained weights
    weights: WeightsFile | None = None      # model.weights: a checkpoint instead of training
    logits: LogitsKey | None = None         # model.logits: which output holds the logits
    source: str = ""                        # the suite file, for error messages

    @property
    def cache_key(self) -> str:
        """The hash of ``key``'s inputs (recorded in run.json and shipped model files)."""
        return self.key.hex

    def build(self, num_classes: int) -> nn.Module:
        """The baseline's architecture on the CPU: with the checkpoint's weights loaded when
        ``model.weights`` is set, wrapped to return the ``model.logits`` output when set."""
        model = self.model_cls(num_classes=num_classes)
        if self.weights is not None:
            self.weights.load_into(model, self.model)
        return model if self.logits is None else SelectOutput(model, self.logits)


@dataclass(frozen=True)
class DefenseSpec:
    """One resolved ``defenses:`` entry."""

    label: str
    name: str
    plugin: type[Defense]
    params: DefenseParams
    params_json: str
    seed: int
    code_hash: str
    key: CacheKey           # of the defended weights: baseline key + this defense

    @property
    def cache_key(self) -> str:
        """The hash of ``key``'s inputs (recorded in run.json and shipped model files)."""
        return self.key.hex

    def build(self) -> Defense:
        return self.plugin(self.params)

    @property
    def randomized(self) -> bool:
        """Whether the plugin declares a random forward pass (``Defense.randomized``)."""
        return bool(self.plugin.randomized)

    @property
    def has_surrogate(self) -> bool:
        """Whether the plugin declares a differentiable surrogate (``Defense.has_surrogate``)."""
        return bool(self.plugin.has_surrogate)


@dataclass(frozen=True)
class AttackSpec:
    """One resolved ``attacks:`` entry: an attack plugin at a list of eps."""

    label: str
    name: str
    plugin: type[Attack]
    params: AttackParams
    params_json: str
    eps: tuple[float, ...]
    limit: int | None
    role: str
    seed: int
    code_hash: str          # of the attack and the evaluation loop: part of every cell's id
    #: for ``needs_source_model`` attacks (transfer): the label of the defense whose model
    #: crafts the examples (its cache key joins ``code_hash``); None for every other attack
    source: str | None = None
    #: the defense labels this attack runs on (None: every defense); see ``applies``
    defenses: tuple[str, ...] | None = None
    #: why the plan added this entry (an adaptive variant, ``robench.adaptive``); "" for the
    #: suite's own entries
    adaptive: str = ""

    @property
    def backend(self) -> str:
        return self.plugin.backend(self.params)

    def build(self, model: nn.Module) -> Attack:
        return self.plugin(model, self.params, seed=self.seed)


@dataclass(frozen=True)
class Plan:
    """Everything a run needs, resolved and validated once."""

    suite: Suite
    source: str
    baseline: BaselineSpec
    defenses: tuple[DefenseSpec, ...]
    attacks: tuple[AttackSpec, ...]
    seed: int               # the seed this plan runs (one of ``seeds``)
    #: adaptive variants ``adaptive: auto`` could not add, with why (``robench.adaptive``)
    adaptive_notes: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.suite.name

    @property
    def seeds(self) -> tuple[int, ...]:
        """Every seed of the suite, in order: the executors run ``for_seed`` of each."""
        return self.suite.seed_list

    def attacks_on(self, defense: str) -> tuple[AttackSpec, ...]:
        """The attacks that run on the defense labelled ``defense`` (``applies``), in order."""
        return tuple(a for a in self.attacks if applies(a, defense))

    def pairs(self) -> list[tuple[DefenseSpec, AttackSpec]]:
        """Every (defense, attack) this plan runs: the one grid the executors, the estimate,
        the probe and the checks of a run iterate."""
        return [(d, a) for d in self.defenses for a in self.attacks if applies(a, d.label)]

    def for_seed(self, seed: int) -> Plan:
        """The same suite resolved for another seed (baseline, defenses and attack starts)."""
        if seed == self.seed:
            return self
        return resolve(self.suite, self.source, seed)


def applies(attack: AttackSpec, defense: str) -> bool:
    """Whether ``attack`` runs on the defense labelled ``defense`` (its ``defenses``: a suite
    entry's ``defenses:`` key or an adaptive variant's defenses; None: every defense)."""
    return attack.defenses is None or defense in attack.defenses


def restrictions(plan: Plan) -> dict[str, tuple[str, ...]]:
    """Per restricted attack label: the defense labels it runs on (``applies``)."""
    return {a.label: a.defenses for a in plan.attacks if a.defenses is not None}


# -- resolving ---------------------------------------------------------------------------------
def _plugin(registry: Any, name: str, where: str) -> Any:
    if name not in registry:
        raise UserError(registry.unknown_message(name), where=where)
    return registry.get(name)


def _params(plugin: Any, raw: dict[str, Any], source: str, where: str) -> Any:
    try:
        return plugin.Params.model_validate(raw)
    except ValidationError as err:
        raise_validation(err, source, prefix=f"{where}.params")


def _baseline(suite: Suite, source: str, seed: int) -> BaselineSpec:
    _plugin(DATASETS, suite.data.dataset, f"{source}: data.dataset")
    model_cls = _plugin(MODELS, suite.model.name, f"{source}: model.name")
    weights = (None if suite.model.weights is None else
               weights_file(suite.model.weights, source, size_limit(model_cls, suite.model.name)))
    # only set options join the key, so the keys of suites without them stay as they were
    extra: dict[str, Any] = {}
    if weights is not None:
        extra["weights_sha256"] = weights.sha256
    if suite.model.logits is not None:
        extra["logits"] = suite.model.logits
    # the engine (how models compute: ``robench.engine``) changes weights in their last bits:
    # its code and its per-device choice join the key (every defense's key holds this one)
    code = code_hash(model_cls, train, DATASETS.get(suite.data.dataset), Engine,
                     *([WeightsFile] if weights is not None else []))
    key = cache_key(kind="baseline", dataset=suite.data.dataset, model=suite.model.name,
                    train=suite.train.model_dump(), seed=derive_seed(seed),
                    code=code, robench=robench.__version__, engine=policy_text(),
                    validation=[suite.data.validation_size, suite.data.split_seed], **extra)
    return BaselineSpec(suite.data.dataset, suite.model.name, model_cls, suite.train,
                        derive_seed(seed), code, key, weights, suite.model.logits, source)


def _resolve_entries(entries: list[Any], registry: Any, section: str, source: str
                     ) -> list[tuple[Any, Any]]:
    out = []
    for i, entry in enumerate(entries):
        plugin = _plugin(registry, entry.name, f"{source}: {section}[{i}].name")
        out.append((plugin, _params(plugin, entry.params, source, f"{section}[{i}]")))
    return out


def _defense_labels(suite: Suite, resolved: list[tuple[Any, Any]], source: str) -> list[str]:
    return unique_labels(suite.defenses, [dict(e.params) for e in suite.defenses],
                         [f"{e.name}\0{params_json(p)}"
                          for e, (_, p) in zip(suite.defenses, resolved, strict=True)],
                         "defenses", source)


def _attack_labels(suite: Suite, resolved: list[tuple[Any, Any]], source: str) -> list[str]:
    return unique_labels(suite.attacks, [_attack_raw(e) for e in suite.attacks],
                         # labelled entries may repeat settings at other eps (their own columns)
                         [json.dumps([e.name, params_json(p), e.limit, e.role]
                                     + ([e.eps] if e.label else []))
                          for e, (_, p) in zip(suite.attacks, resolved, strict=True)],
                         "attacks", source, [_always_shown(plugin, params)
                                             for plugin, params in resolved])


def entry_labels(suite: Suite, source: str) -> tuple[list[str], list[str]]:
    """The labels ``resolve`` gives the defense and attack entries, in suite order (plugins
    and params checked; no weights read, no code hashed): e.g. a recorded suite's cells."""
    defenses = _resolve_entries(suite.defenses, DEFENSES, "defenses", source)
    attacks = _resolve_entries(suite.attacks, ATTACKS, "attacks", source)
    return _defense_labels(suite, defenses, source), _attack_labels(suite, attacks, source)


def _defenses(suite: Suite, source: str, baseline: BaselineSpec, seed: int
              ) -> tuple[DefenseSpec, ...]:
    resolved = _resolve_entries(suite.defenses, DEFENSES, "defenses", source)
    labels = _defense_labels(suite, resolved, source)
    seed = derive_seed(seed)
    specs = []
    for label, entry, (plugin, params) in zip(labels, suite.defenses, resolved, strict=True):
        text = params_json(params)
        code = code_hash(plugin, *plugin.code_dependencies(params))
        key = cache_key(kind="defense", baseline=baseline.cache_key, name=entry.name,
                        params=text, seed=seed, code=code)
        specs.append(DefenseSpec(label, entry.name, plugin, params, text, seed, code, key))
    return tuple(specs)


def _attack_raw(entry: AttackEntry) -> dict[str, Any]:
    """What the user wrote for an attack entry, for automatic labels (limit/role included)."""
    extra: dict[str, Any] = {k: getattr(entry, k) for k in ("limit", "role")
                             if k in entry.model_fields_set}
    return {**entry.params, **extra}


def _attacks(suite: Suite, source: str, seed: int, defenses: tuple[DefenseSpec, ...]
             ) -> tuple[tuple[AttackSpec, ...], tuple[str, ...]]:
    """The suite's attack entries, then (``adaptive: auto``) their adaptive variants
    (``robench.adaptive``); and what escalation could not add."""
    resolved = _resolve_entries(suite.attacks, ATTACKS, "attacks", source)
    labels = _attack_labels(suite, resolved, source)
    libraries = _library_versions()
    specs = []
    for i, (label, entry, (plugin, params)) in enumerate(zip(labels, suite.attacks, resolved,
                                                             strict=True)):
        where = f"{source}: attacks[{i}]"
        role = _role(plugin, entry, f"{where}.role")
        norm = plugin.norm_of(params)
        check_eps(norm, entry.eps, suite.data.dataset, f"{where}.eps")
        if entry.label is not None and norm != DEFAULT_NORM and norm not in entry.label.lower():
            # an automatic label shows the norm (``label_params``); a chosen one must too
            raise UserError(f"the label of an {norm.upper()} attack must name its norm (contain "
                            f"{norm!r}), so its columns cannot pass for L-inf ones",
                            where=f"{where}.label")
        only = _restriction(entry, defenses, where)
        specs.append(_attack_spec(label, entry.name, plugin, params, entry, role, seed,
                                  (defenses, libraries, where), only))
    if adaptive_mode(suite) == "off":
        return tuple(specs), ()
    escalation = escalate(specs, defenses, suite.adaptive_eot_samples)
    taken = set(labels)
    for variant in escalation.variants:
        where = f"{source}: attacks[{variant.of}]"
        if variant.label in taken:
            raise UserError(f"{variant.label!r}, the label of an adaptive variant of this "
                            "entry (adaptive: auto), is also the label of another entry; "
                            "rename that one or set `adaptive: off`", where=where)
        taken.add(variant.label)
        base = specs[variant.of]
        specs.append(_attack_spec(variant.label, variant.name, ATTACKS.get(variant.name),
                                  variant.params, suite.attacks[variant.of], base.role, seed,
                                  (defenses, libraries, where), variant.defenses,
                                  variant.reason))
    return tuple(specs), tuple(escalation.notes)


def adaptive_mode(suite: Suite) -> str:
    """``adaptive`` as the plan reads it: unset is ``auto`` (docs/adaptive.md says why; a
    recorded suite without the key reads as ``off``: ``robench.config.recorded_suite``)."""
    return suite.adaptive or "auto"


def _restriction(entry: AttackEntry, defenses: tuple[DefenseSpec, ...], where: str
                 ) -> tuple[str, ...] | None:
    """An entry's ``defenses:`` (None: every defense), each a defense label of the suite."""
    if entry.defenses is None:
        return None
    known = [d.label for d in defenses]
    for j, label in enumerate(entry.defenses):
        if label not in known:
            raise UserError(f"{label!r} is not a defense label of this suite (labels: "
                            f"{', '.join(known)})", where=f"{where}.defenses[{j}]")
        if entry.defenses.index(label) != j:
            raise UserError(f"{label!r} listed twice", where=f"{where}.defenses[{j}]")
    return tuple(entry.defenses)


def _attack_spec(label: str, name: str, plugin: type[Attack], params: AttackParams,
                 entry: AttackEntry, role: str, seed: int,
                 context: tuple[tuple[DefenseSpec, ...], dict[str, str | None], str],
                 only: tuple[str, ...] | None, adaptive: str = "") -> AttackSpec:
    defenses, libraries, where = context
    text = params_json(params)
    # the attack, the evaluation loop, the seed derivation, the engine and the libraries
    # that may compute the examples: any change makes its cells new cells
    code = code_hash(plugin, evaluate_attack, derive_seed, Engine,
                     *plugin.code_dependencies(params))
    crafted_on = _source_defense(plugin, params, defenses, where)
    # a transfer cell also changes with its source model (the source defense's key)
    extra = {"source": crafted_on.cache_key} if crafted_on is not None else {}
    code = cache_key(code=code, libs=libraries, engine=policy_text(), **extra).hex
    return AttackSpec(label, name, plugin, params, text, tuple(entry.eps), entry.limit, role,
                      derive_seed(seed, "attack", plugin.random_starts_of or name, text),
                      code[:16], crafted_on.label if crafted_on is not None else None,
                      only, adaptive)


def _source_defense(plugin: type[Attack], params: AttackParams,
                    defenses: tuple[DefenseSpec, ...], where: str) -> DefenseSpec | None:
    """The defense a ``needs_source_model`` attack crafts on (None for other attacks); a
    source that is not in the suite is the user's error, found before any work."""
    if not plugin.needs_source_model:
        return None
    wanted = plugin.source_label(params)
    if wanted is None:
        undefended = [d for d in defenses if d.name == "none"]
        if not undefended:
            raise UserError("the default source is the undefended baseline (the `none` "
                            "defense), which this suite does not list; add `- name: none` "
                            "to defenses or name a defense label here",
                            where=f"{where}.params.source")
        return undefended[0]
    for defense in defenses:
        if defense.label == wanted:
            return defense
    known = ", ".join(d.label for d in defenses)
    raise UserError(f"source {wanted!r} is not a defense label of this suite (labels: "
                    f"{known})", where=f"{where}.params.source")


#: the role of every verifier's rows (a lower bound: never part of the worst case)
BOUND_ROLE = "bound"
#: the output size of the throw-away model a verifier inspects (its layers do not depend on it)
INSPECTED_CLASSES = 10


def _role(plugin: type[Attack], entry: AttackEntry, where: str) -> str:
    """A verifier's rows are bounds, whatever the suite says; an attack's role is the suite's."""
    if plugin.family != "verifier":
        return entry.role
    if entry.role != "eval":  # the default (command-line overrides mark every key as set)
        raise UserError(f"{entry.name} is a verifier: its rows always have role "
                        f"{BOUND_ROLE!r}; remove `role`", where=where)
    return BOUND_ROLE


def _check_verifiers(baseline: BaselineSpec, attacks: tuple[AttackSpec, ...],
                     source: str, defenses: tuple[DefenseSpec, ...] = ()) -> None:
    """Every verifier can bound the suite's model (layers, libraries) and certify every
    defense it runs on (its entry's ``defenses:``, else all), before any work."""
    verifiers = [(i, a) for i, a in enumerate(attacks) if a.plugin.family == "verifier"]
    if not verifiers:
        return
    with torch.random.fork_rng(devices=[]):  # building a model draws weights: not the run's
        model = baseline.model_cls(num_classes=INSPECTED_CLASSES)
    for i, spec in verifiers:
        try:
            # family "verifier": a robench.attacks.verifier.Verifier subclass
            verifier = cast("type[Verifier]", spec.plugin)
            verifier.check_model(model, baseline.model, spec.params)
            for defense in defenses:
                if applies(spec, defense.label):
                    verifier.check_defense(defense.plugin, defense.params, defense.label)
        except UserError as err:
            raise UserError(err.message, where=f"{source}: attacks[{i}]") from None


def _check_defense_models(baseline: BaselineSpec, defenses: tuple[DefenseSpec, ...],
                          source: str) -> None:
    """Every defense can work on the suite's model (``Defense.check_model``), before any
    work; e.g. certified training needs a model its bound propagation supports."""
    for i, spec in enumerate(defenses):
        if not spec.plugin.checks_model:
            continue
        with torch.random.fork_rng(devices=[]):
            model = baseline.model_cls(num_classes=INSPECTED_CLASSES)
        try:
            spec.plugin.check_model(model, baseline.model, spec.params)
        except UserError as err:
            raise UserError(err.message, where=f"{source}: defenses[{i}]") from None


def _always_shown(plugin: type[Attack], params: AttackParams) -> dict[str, Any]:
    defaults = plugin.Params().model_dump(mode="json")
    values = params.model_dump(mode="json")
    shown = {k: values[k] for k in plugin.label_params if values.get(k) != defaults.get(k)}
    norm = plugin.norm_of(params)
    if norm != DEFAULT_NORM:  # e.g. a transfer crafted under L2: its norm is nested
        shown.setdefault("norm", norm)
    return shown


def _library_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for dist in ("torch", "torchattacks", "adversarial-robustness-toolbox"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def resolve(suite: Suite, source: str, seed: int | None = None) -> Plan:
    """The typed plan of a structurally valid suite (plugins, params, labels, seeds, keys) for
    ``seed`` (default: the suite's first seed)."""
    seed = suite.seed_list[0] if seed is None else seed
    baseline = _baseline(suite, source, seed)
    defenses = _defenses(suite, source, baseline, seed)
    attacks, notes = _attacks(suite, source, seed, defenses)
    _check_verifiers(baseline, attacks, source, defenses)
    _check_defense_models(baseline, defenses, source)
    # the mode written out, so run.json records what ran (``robench.config.recorded_suite``)
    suite = suite.model_copy(update={"adaptive": adaptive_mode(suite)})
    return Plan(suite, source, baseline, defenses, attacks, seed, notes)


def load_plan(path: str | Path) -> Plan:
    """Read, validate and resolve a suite file."""
    return resolve(load_suite(path), str(path))


def resolve_raw(raw: Any, source: str) -> Plan:
    """Validate and resolve a parsed YAML document (as ``load_plan`` does for a file)."""
    return resolve(parse_suite(raw, source), source)
