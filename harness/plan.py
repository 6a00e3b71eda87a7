"""Resolve once: a validated suite becomes a typed run plan.

``resolve(suite, source)`` looks every plugin up by its registered name, validates its params
with the plugin's own schema (canonical: defaults filled in, nested params included), gives
every entry a label (explicit ``label`` wins; a plugin listed twice is named by the params
that tell its entries apart, e.g. ``unlearning[method=ssd]``), derives its seed from the suite
seed and its label (never its position) and hashes the code that will produce its numbers. The
runner, the cache, resume and the checks consume the plan; nothing downstream parses params
again. Every problem is a ``UserError`` naming the file and key path.

Seeds: the baseline and every defense use the suite seed itself (common random numbers: all
unlearning methods see the same forget samples, so their differences are theirs); each attack
uses ``derive_seed(seed, "attack", name, canonical params)``, from what it is rather than from
its label or position (the same random starts against every defense, and adding another entry
changes no existing entry's numbers; per-image draws: ``Attack.uniform_noise``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from torch import nn

import robench
from robench.attacks import ATTACKS, Attack, AttackParams
from robench.cache import cache_key
from robench.codehash import code_hash
from robench.config import AttackEntry, Suite, load_suite, parse_suite, raise_validation
from robench.data import DATASETS
from robench.defenses import DEFENSES, Defense, DefenseParams
from robench.errors import UserError
from robench.evaluation import evaluate_attack
from robench.models import MODELS
from robench.seeds import derive_seed
from robench.training import TrainConfig, train

MAX_LABEL = 80


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
    cache_key: str


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
    cache_key: str          # of the defended weights: baseline key + this defense

    def build(self) -> Defense:
        return self.plugin(self.params)


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

    @property
    def name(self) -> str:
        return self.suite.name

    @property
    def seed(self) -> int:
        return self.suite.seed


# -- labels ------------------------------------------------------------------------------------
def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return f"{value:g}"
    return json.dumps(value, separators=(",", ":"))


def automatic_labels(name: str, raw: list[dict[str, Any]],
                     always: list[dict[str, Any]] | None = None) -> list[str]:
    """Labels for unlabelled entries of one plugin: the plugin name plus the settings the user
    wrote that tell its entries apart (none when it is listed once), plus ``always[i]``: the
    settings the plugin wants in every label (``Attack.label_params``, e.g. a reduced
    variant's ``version=fast``)."""
    flat = [_flat(r) for r in raw]
    keys = sorted({k for f in flat for k in f})
    differing = [k for k in keys if len({json.dumps(f.get(k, "\0"), sort_keys=True)
                                         for f in flat}) > 1] if len(raw) > 1 else []
    labels = []
    for i, f in enumerate(flat):
        pairs = {k: f[k] for k in differing if k in f}
        pairs.update((always or [{}] * len(raw))[i])
        shown = ",".join(f"{k}={_shown(v)}" for k, v in sorted(pairs.items()))
        labels.append(f"{name}[{shown}]" if shown else name)
    return labels


def _labels(entries: list[Any], raws: list[dict[str, Any]], identities: list[str],
            section: str, source: str, always: list[dict[str, Any]] | None = None) -> list[str]:
    """Explicit or automatic labels; identical entries and colliding labels are errors."""
    first: dict[str, int] = {}
    for i, identity in enumerate(identities):
        if identity in first:
            hint = "merge their eps or give one a `label:`" if section == "attacks" else \
                "remove one"
            raise UserError(f"same plugin and settings as {section}[{first[identity]}]; {hint}",
                            where=f"{source}: {section}[{i}]")
        first[identity] = i
    labels: list[str] = [entry.label for entry in entries]
    unlabelled: dict[str, list[int]] = {}
    for i, entry in enumerate(entries):
        if entry.label is None:
            unlabelled.setdefault(entry.name, []).append(i)
    for name, indices in unlabelled.items():
        forced = [(always or [{}] * len(entries))[i] for i in indices]
        for i, label in zip(indices, automatic_labels(name, [raws[i] for i in indices], forced),
                            strict=True):
            labels[i] = label
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):
        where = f"{source}: {section}[{i}]"
        if label in seen:
            raise UserError(f"label {label!r} is also the label of {section}[{seen[label]}]; "
                            "give one of them a distinct `label:`", where=where)
        if len(label) > MAX_LABEL:
            raise UserError(f"automatic label is longer than {MAX_LABEL} characters; "
                            "give this entry a `label:`", where=where)
        seen[label] = i
    return labels


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


def _baseline(suite: Suite, source: str) -> BaselineSpec:
    _plugin(DATASETS, suite.data.dataset, f"{source}: data.dataset")
    model_cls = _plugin(MODELS, suite.model.name, f"{source}: model.name")
    code = code_hash(model_cls, train, DATASETS.get(suite.data.dataset))
    key = cache_key(kind="baseline", dataset=suite.data.dataset, model=suite.model.name,
                    train=suite.train.model_dump(), seed=derive_seed(suite.seed),
                    code=code, robench=robench.__version__)
    return BaselineSpec(suite.data.dataset, suite.model.name, model_cls, suite.train,
                        derive_seed(suite.seed), code, key)


def _resolve_entries(entries: list[Any], registry: Any, section: str, source: str
                     ) -> list[tuple[Any, Any]]:
    out = []
    for i, entry in enumerate(entries):
        plugin = _plugin(registry, entry.name, f"{source}: {section}[{i}].name")
        out.append((plugin, _params(plugin, entry.params, source, f"{section}[{i}]")))
    return out


def _defenses(suite: Suite, source: str, baseline: BaselineSpec) -> tuple[DefenseSpec, ...]:
    resolved = _resolve_entries(suite.defenses, DEFENSES, "defenses", source)
    labels = _labels(suite.defenses, [dict(e.params) for e in suite.defenses],
                     [f"{e.name}\0{params_json(p)}"
                      for e, (_, p) in zip(suite.defenses, resolved, strict=True)],
                     "defenses", source)
    seed = derive_seed(suite.seed)
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
    extra = {k: getattr(entry, k) for k in ("limit", "role") if k in entry.model_fields_set}
    return {**entry.params, **extra}


def _attacks(suite: Suite, source: str,
             defenses: tuple[DefenseSpec, ...]) -> tuple[AttackSpec, ...]:
    resolved = _resolve_entries(suite.attacks, ATTACKS, "attacks", source)
    labels = _labels(suite.attacks, [_attack_raw(e) for e in suite.attacks],
                     # labelled entries may repeat settings at other eps (their own columns)
                     [json.dumps([e.name, params_json(p), e.limit, e.role]
                                 + ([e.eps] if e.label else []))
                      for e, (_, p) in zip(suite.attacks, resolved, strict=True)],
                     "attacks", source, [_always_shown(plugin, params)
                                         for plugin, params in resolved])
    libraries = _library_versions()
    specs = []
    for i, (label, entry, (plugin, params)) in enumerate(
            zip(labels, suite.attacks, resolved, strict=True)):
        text = params_json(params)
        # the attack, the evaluation loop, the seed derivation and the libraries that may
        # compute the examples: any change makes its cells new cells
        code = code_hash(plugin, evaluate_attack, derive_seed, *plugin.code_dependencies(params))
        crafted_on = _source_defense(plugin, params, defenses, f"{source}: attacks[{i}]")
        # a transfer cell also changes with its source model (the source defense's key)
        extra = {"source": crafted_on.cache_key} if crafted_on is not None else {}
        code = cache_key(code=code, libs=libraries, **extra)
        specs.append(AttackSpec(label, entry.name, plugin, params, text, tuple(entry.eps),
                                entry.limit, entry.role,
                                derive_seed(suite.seed, "attack", entry.name, text), code[:16],
                                crafted_on.label if crafted_on is not None else None))
    return tuple(specs)


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


def _always_shown(plugin: type[Attack], params: AttackParams) -> dict[str, Any]:
    defaults = plugin.Params().model_dump(mode="json")
    values = params.model_dump(mode="json")
    return {k: values[k] for k in plugin.label_params if values.get(k) != defaults.get(k)}


def _library_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for dist in ("torch", "torchattacks", "adversarial-robustness-toolbox"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def resolve(suite: Suite, source: str) -> Plan:
    """The typed plan of a structurally valid suite (plugins, params, labels, seeds, keys)."""
    baseline = _baseline(suite, source)
    defenses = _defenses(suite, source, baseline)
    return Plan(suite, source, baseline, defenses, _attacks(suite, source, defenses))


def load_plan(path: str | Path) -> Plan:
    """Read, validate and resolve a suite file."""
    return resolve(load_suite(path), str(path))


def resolve_raw(raw: Any, source: str) -> Plan:
    """Validate and resolve a parsed YAML document (as ``load_plan`` does for a file)."""
    return resolve(parse_suite(raw, source), source)
