"""How each model a run used was obtained, for run.json's ``model_training`` record.

A results folder is only regenerable if one knows how its models were trained: the same
training on another device or thread count sums floats in another order and gives other last
bits (``robench.cache``). For every model of the run (each seed's baseline and each defense)
the record says where it came from (``source``: trained in this run, loaded from the model
cache, a shipped model of ``--models-from``, a ``model.weights`` file, or a defense that is not
cached and was applied in this run), the model cache entry it is stored under (``cache_entry``:
the entry's file name, its key with the data fingerprint), the hash of the code that trains or
defends it (``code_hash``), and how the entry was trained as the entry itself records it
(``trained_with``: device, torch threads, torch version, CPU architecture, memory format, the
CPU kernels torch picked and the settings capping them (``cpu_capability``,
``cpu_kernel_settings``); null when there is
no entry to read, e.g. with ``--no-cache``, an unwritable cache, or a Ray cluster whose workers
keep another cache than the driver's).

The record is read from the cache entries after the executor finished, not from the tasks, so
it is the same for the serial and the Ray executor: a model trained in a Ray worker is recorded
with the worker's thread count, which is what its entry stores.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from robench.cache import CacheKey, ModelCache
from robench.plan import Plan

TRAINED = "trained in this run"
LOADED = "loaded from cache"
SHIPPED = "shipped model (--models-from)"
WEIGHTS = "model.weights file"
APPLIED = "applied in this run (not cached)"


def entry_record(cache: ModelCache, key: CacheKey, data_hash: str, source: str,
                 code_hash: str) -> dict[str, Any]:
    """One model's record: its source, cache entry, code hash and recorded training set-up."""
    entry = key.with_data(data_hash)
    meta = cache.recorded_meta(entry) if source in (TRAINED, LOADED) else None
    how = meta.get("trained_with") if meta is not None else None
    return {"source": source, "cache_entry": entry.hex if meta is not None else None,
            "code_hash": code_hash, "trained_with": how if isinstance(how, dict) else None}


def model_records(plan: Plan, cache: ModelCache, data_hash: str,
                  trained_baselines: Collection[int],
                  defended_now: Collection[tuple[str, int]],
                  models_from: bool = False) -> dict[str, dict[str, Any]]:
    """Every model of ``plan`` by ``baseline`` or defense label (with ``@seed <s>`` when the
    suite has several seeds): ``trained_baselines`` are the seeds whose baseline this run
    trained, ``defended_now`` the (label, seed) pairs it defended (``RunRecorder``)."""
    records: dict[str, dict[str, Any]] = {}
    many = len(plan.seeds) > 1
    for seed in plan.seeds:
        seeded = plan.for_seed(seed)
        tag = f" @seed {seed}" if many else ""
        base = seeded.baseline
        if models_from:
            source = SHIPPED
        elif base.weights is not None:
            source = WEIGHTS
        else:
            source = TRAINED if seed in trained_baselines else LOADED
        records[f"baseline{tag}"] = {"role": "baseline", "seed": seed,
                                     **entry_record(cache, base.key, data_hash, source,
                                                    base.code_hash)}
        for spec in seeded.defenses:
            if not spec.plugin.cacheable:
                source = APPLIED
            elif models_from:
                source = SHIPPED
            else:
                source = TRAINED if (spec.label, seed) in defended_now else LOADED
            records[f"{spec.label}{tag}"] = {"role": "defense", "seed": seed,
                                             **entry_record(cache, spec.key, data_hash, source,
                                                            spec.code_hash)}
    return records
