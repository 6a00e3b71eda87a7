"""The suite file: a strict schema, loaded with ``yaml.safe_load``.

Structure is checked by pydantic (unknown keys, wrong types, eps in [0, 1], empty lists); then
each plugin name is looked up in its registry and its ``params`` validated by the plugin's own
schema. Every error becomes one ``UserError`` naming the file and the key path, before any work
starts.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from robench.errors import UserError
from robench.training import TrainConfig

Eps = Annotated[float, Field(ge=0.0, le=1.0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DataConfig(_Strict):
    dataset: str = "mnist"
    root: str | None = None
    eval_limit: int | None = Field(None, ge=1)


class ModelConfig(_Strict):
    name: str = "lenet5"


class DefenseEntry(_Strict):
    name: str
    label: str | None = None       # leaderboard name; defaults to ``name``
    params: dict[str, Any] = Field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.label or self.name


class AttackEntry(_Strict):
    name: str
    eps: list[Eps] = Field(min_length=1)
    label: str | None = None       # leaderboard name; defaults to ``name`` (+ backend)
    params: dict[str, Any] = Field(default_factory=dict)
    # optional: attack only the first N evaluation images (for expensive attacks)
    limit: int | None = Field(None, ge=1)
    # "check": a sanity-check attack (e.g. PGD at eps 0.5), kept out of the worst case
    role: Literal["eval", "check"] = "eval"

    @property
    def key(self) -> str:
        if self.label:
            return self.label
        backend = self.params.get("backend", "native")
        return self.name if backend == "native" else f"{self.name}[{backend}]"


class Suite(_Strict):
    name: str
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    defenses: list[DefenseEntry] = Field(
        default_factory=lambda: [DefenseEntry(name="none")], min_length=1)
    attacks: list[AttackEntry] = Field(min_length=1)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value):
            raise ValueError("must be letters, digits, '_', '-' or '.' (it names a folder)")
        return value


def key_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(top level)"


def _describe(err: dict[str, Any]) -> str:
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "missing":
        return "required key is missing"
    value = err.get("input")
    if err["type"] not in ("missing",) and not isinstance(value, dict | list):
        msg += f" (got {value!r})"
    return msg


def raise_validation(err: ValidationError, source: str, prefix: str = "") -> None:
    first = err.errors()[0]
    loc = key_path(tuple(first["loc"]))
    where = f"{source}: {prefix}{'.' if prefix and not loc.startswith('[') else ''}{loc}"
    if prefix and loc == "(top level)":
        where = f"{source}: {prefix}"
    extra = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    raise UserError(_describe(first) + extra, where=where) from None


def parse_suite(raw: Any, source: str) -> Suite:
    """Validate a parsed YAML document (structure, plugin names, plugin params)."""
    if not isinstance(raw, dict):
        raise UserError("a suite must be a mapping of keys (name, data, model, ...)", where=source)
    try:
        suite = Suite.model_validate(raw)
    except ValidationError as err:
        raise_validation(err, source)
    validate_plugins(suite, source)
    return suite


def validate_plugins(suite: Suite, source: str) -> None:
    """Look up every plugin by registered name and validate its params with its schema."""
    from robench.attacks import ATTACKS
    from robench.data import DATASETS
    from robench.defenses import DEFENSES
    from robench.models import MODELS

    for registry, value, where in ((DATASETS, suite.data.dataset, "data.dataset"),
                                   (MODELS, suite.model.name, "model.name")):
        if value not in registry:
            raise UserError(registry.unknown_message(value), where=f"{source}: {where}")
    seen: dict[str, int] = {}
    for section, registry in (("defenses", DEFENSES), ("attacks", ATTACKS)):
        seen.clear()
        for i, entry in enumerate(getattr(suite, section)):
            where = f"{section}[{i}]"
            if entry.name not in registry:
                raise UserError(registry.unknown_message(entry.name),
                                where=f"{source}: {where}.name")
            if entry.key in seen:
                raise UserError(
                    f"duplicate entry {entry.key!r} (also {section}[{seen[entry.key]}]); "
                    "give one of them a distinct `label:`", where=f"{source}: {where}")
            seen[entry.key] = i
            plugin = registry.get(entry.name)
            try:
                plugin.Params.model_validate(entry.params)
            except ValidationError as err:
                raise_validation(err, source, prefix=f"{where}.params")


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite file; every problem is a ``UserError`` naming file and key."""
    path = Path(path)
    if not path.is_file():
        raise UserError("suite file not found", where=str(path))
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise UserError(f"invalid YAML{at}: {problem}", where=str(path)) from None
    except UnicodeDecodeError:
        raise UserError("not a UTF-8 text file", where=str(path)) from None
    return parse_suite(raw, str(path))


def plugin_params(registry: Any, name: str, params: dict[str, Any]) -> BaseModel:
    """The validated params object for a registered plugin."""
    return registry.get(name).Params.model_validate(params)
