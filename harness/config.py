"""The suite file: a strict schema, loaded with ``yaml.safe_load``'s semantics within bounds
(``robench.suite_yaml``: file size, nesting, alias expansion, repeated and merged keys).

This module checks structure (pydantic: unknown keys, wrong types, eps in [0, 28] (L-inf:
[0, 1], checked by ``robench.plan`` once the norm is known) and canonicalised, empty lists,
repeated eps). ``robench.plan`` then resolves the plugins once (names,
params, labels, seeds, cache keys). Every error becomes one ``UserError`` naming the file and
the key path, before any work starts.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from robench.column_names import reserved_label_reason
from robench.eps import canonical_eps
from robench.errors import UserError, key_path
from robench.suite_yaml import read_suite_file
from robench.training import TrainConfig

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails

#: the largest eps of any norm: the L2 diameter of [0, 1]^784 (an MNIST image) is 28; the
#: norm-specific limits (L-inf eps <= 1, an L2 warning above the dataset's sensible range) are
#: checked once the attack's ``norm`` is known (``robench.plan``)
MAX_EPS = 28.0
Eps = Annotated[float, Field(ge=0.0, le=MAX_EPS), AfterValidator(canonical_eps)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class DataConfig(_Strict):
    dataset: str = "mnist"
    root: str | None = None
    # a seeded random sample of the test split (null: all of it); an attack's `limit` takes a
    # nested random sample of the same draw (robench.data.evaluation_split)
    eval_limit: int | None = Field(None, ge=1)
    # images held out of the training split for defense monitors and tuning (never the test set)
    validation_size: int = Field(5000, ge=0)
    # seeds the validation hold-out and the evaluation subsets; independent of `seed`/`seeds`,
    # so every seed of a run sees the same images (paired across seeds)
    split_seed: int = Field(0, ge=0, lt=2**63)


class ModelConfig(_Strict):
    name: str = "lenet5"
    # a checkpoint to evaluate instead of training the baseline (robench.weights); a relative
    # path is relative to the suite file's folder
    weights: str | None = Field(None, min_length=1)
    # for a model whose forward returns a tuple/list or a dict: the index or key of the logits
    logits: int | str | None = None

    @field_validator("logits", mode="before")
    @classmethod
    def _index_or_key(cls, value: Any) -> Any:
        # one message instead of pydantic's one per member of the union
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | str)):
            raise ValueError("must be an index (an integer) or a key (a string) of the "
                             "model's output")
        return value


#: Unicode categories a label must not contain: control characters (line breaks, NEL), format
#: characters (bidi overrides and isolates, zero-width ones: U+202E shows "none" reversed),
#: line and paragraph separators, and private-use, surrogate or unassigned code points
HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Co", "Cs", "Cn"})


def hidden_or_reserved(label: str) -> str | None:
    """What makes ``label`` unusable as any label, explicit or automatic (None: nothing): a
    hidden character or a name the leaderboard generates."""
    return _hidden(label) or _reserved(label)


def _hidden(label: str) -> str | None:
    hidden = next((c for c in label if unicodedata.category(c) in HIDDEN_CATEGORIES), None)
    if hidden is None:
        return None
    return (f"must not contain line breaks, control or invisible characters "
            f"(U+{ord(hidden):04X} at position {label.index(hidden) + 1})")


def _reserved(label: str) -> str | None:
    reserved = reserved_label_reason(label)
    return None if reserved is None else f"{reserved}; choose another label"


def _valid_label(label: str) -> str:
    """A label names a leaderboard row or column and part of file names."""
    # in this order: a trailing line break is a hidden character, not "ends with a space"
    problem = _hidden(label) or _misplaced(label) or _reserved(label)
    if problem is not None:
        raise ValueError(problem)
    return label


def _misplaced(label: str) -> str | None:
    if label != label.strip():
        return "must not start or end with a space"
    if label[0] in "=+-@":
        return "must not start with = + - @ (a spreadsheet would run it as a formula)"
    if "@" in label:
        return "must not contain '@' (leaderboard columns are named attack@eps)"
    return None


Label = Annotated[str, Field(min_length=1, max_length=80), AfterValidator(_valid_label)]


class DefenseEntry(_Strict):
    name: str
    label: Label | None = None     # leaderboard name; default: automatic (see robench.plan)
    params: dict[str, Any] = Field(default_factory=dict)


class AttackEntry(_Strict):
    name: str
    eps: list[Eps] = Field(min_length=1, max_length=1000)
    label: Label | None = None     # leaderboard name; default: automatic (see robench.plan)
    params: dict[str, Any] = Field(default_factory=dict)
    # optional: attack only the first N evaluation images (for expensive attacks)
    limit: int | None = Field(None, ge=1)
    # "check": a sanity-check attack (e.g. PGD at eps 0.5), kept out of the worst case; a
    # verifier's rows get the role "bound" (robench.plan), never written here
    role: Literal["eval", "check"] = "eval"
    # optional: run this attack on these defense labels only (default: every defense);
    # checked against the suite's labels when the plan is resolved (robench.plan)
    defenses: list[Label] | None = Field(None, min_length=1, max_length=200)

    @field_validator("eps")
    @classmethod
    def _distinct(cls, values: list[float]) -> list[float]:
        repeated = sorted({e for e in values if values.count(e) > 1})
        if repeated:
            raise ValueError(f"eps {', '.join(f'{e:g}' for e in repeated)} listed twice "
                             "(each eps is one result cell)")
        return values


Seed = Annotated[int, Field(ge=0, lt=2**63)]


class Suite(_Strict):
    name: str = Field(max_length=100)
    # one seed (default 0) or a list: the whole grid repeats per seed (baseline training,
    # defense randomness, attack starts); give one of the two keys, not both
    seed: Seed | None = None
    seeds: list[Seed] | None = Field(None, min_length=1, max_length=100)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    defenses: list[DefenseEntry] = Field(
        default_factory=lambda: [DefenseEntry(name="none")], min_length=1, max_length=200)
    attacks: list[AttackEntry] = Field(min_length=1, max_length=200)
    # adaptive attacks (docs/adaptive.md): "auto" adds the BPDA/EOT variants of the gradient
    # attacks for defenses that declare a surrogate or randomness; unset means "auto" for a
    # suite file and "off" for a run.json written before the key existed (``recorded_suite``)
    adaptive: Literal["auto", "off"] | None = None
    # the gradient samples of an EOT variant (``eot_samples``) for a randomized defense
    adaptive_eot_samples: int = Field(10, ge=1, le=1000)

    @field_validator("adaptive", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare `off` / `on` as a boolean
        return {False: "off", True: "auto"}.get(value, value) if isinstance(value, bool) \
            else value

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, values: list[int] | None, info: ValidationInfo
                        ) -> list[int] | None:
        if values is not None and info.data.get("seed") is not None:
            raise ValueError("give either `seed` or `seeds`, not both")
        seeds = values or []
        repeated = sorted({s for s in seeds if seeds.count(s) > 1})
        if repeated:
            raise ValueError(f"seed {', '.join(map(str, repeated))} listed twice")
        return values

    @property
    def seed_list(self) -> tuple[int, ...]:
        """The seeds this suite runs, in order (``seeds``, else ``(seed,)``, else ``(0,)``)."""
        if self.seeds is not None:
            return tuple(self.seeds)
        return (0 if self.seed is None else self.seed,)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value):
            raise ValueError("must be letters, digits, '_', '-' or '.' (it names a folder)")
        return value


def _describe(err: ErrorDetails) -> str:
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "missing":
        return "required key is missing"
    value = err.get("input")
    if err["type"] not in ("missing",) and not isinstance(value, dict | list):
        shown = repr(value)
        msg += f" (got {shown[:60] + '...' if len(shown) > 60 else shown})"
    return msg


def raise_validation(err: ValidationError, source: str, prefix: str = "") -> None:
    first = err.errors()[0]
    loc = key_path(tuple(first["loc"]))
    where = f"{source}: {prefix}{'.' if prefix and not loc.startswith('[') else ''}{loc}"
    if prefix and loc == "(top level)":
        where = f"{source}: {prefix}"
    extra = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    raise UserError(_describe(first) + extra, where=where) from None


def recorded_suite(raw: Any, source: str) -> Suite:
    """A suite as run.json recorded it (``parse_suite``); one recorded before ``adaptive``
    existed ran without adaptive attacks, so its missing key reads as ``off`` (the plan of
    a suite file reads it as ``auto``)."""
    if isinstance(raw, dict) and "adaptive" not in raw:
        raw = {**raw, "adaptive": "off"}
    return parse_suite(raw, source)


def parse_suite(raw: Any, source: str) -> Suite:
    """Validate the structure of a parsed YAML document (plugins: ``robench.plan.resolve``)."""
    if not isinstance(raw, dict):
        raise UserError("a suite must be a mapping of keys (name, data, model, ...)", where=source)
    try:
        return Suite.model_validate(raw)
    except ValidationError as err:
        raise_validation(err, source)
        raise  # unreachable: raise_validation always raises


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite file; every problem is a ``UserError`` naming file and key.
    The YAML is read within ``robench.suite_yaml``'s bounds (size, nesting, alias expansion)
    before anything validates it."""
    return parse_suite(read_suite_file(path), str(path))
