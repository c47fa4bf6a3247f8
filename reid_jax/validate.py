"""Config checks run before any data is read or anything compiled: one ConfigError naming the
key and the value, and the resumption rules of a workdir."""

import json
from collections.abc import Callable
from pathlib import Path

import ml_collections

from reid_jax.eval.distances import DISTANCES, GLOBAL_DISTANCES
from reid_jax.models.backbones import BACKBONES
from reid_jax.models.baseline import NECK_FEATS
from reid_jax.models.neck import NECKS
from reid_jax.models.resnet import STAGE_SIZES

DTYPES = ("float32", "bfloat16", "float16")
# Keys a resumed run may change: they do not alter what the finished steps computed.
RESUMABLE_KEYS = ("train.epochs", "train.log_every_steps", "train.eval_every_epochs",
                  "train.checkpoint_every_epochs", "train.checkpoint_every_steps",
                  "train.keep_checkpoints", "data.root", "data.eval_batch_size", "eval.",
                  "visualize.")


class ConfigError(ValueError):
    """A config value (or a command-line argument) that cannot work."""


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int_at_least(low: int) -> tuple[Callable, str]:
    return (lambda v: _is_int(v) and v >= low), f"an integer >= {low}"


def _number_in(low: float, high: float, high_open: bool = False) -> tuple[Callable, str]:
    bracket = ")" if high_open else "]"
    return ((lambda v: _is_number(v) and low <= v and (v < high if high_open else v <= high)),
            f"a number in [{low}, {high}{bracket}")


def _one_of(*choices) -> tuple[Callable, str]:
    return (lambda v: v in choices), f"one of {choices}"


POSITIVE = ((lambda v: _is_number(v) and v > 0), "a number > 0")
NON_NEGATIVE = ((lambda v: _is_number(v) and v >= 0), "a number >= 0")
BOOL = ((lambda v: isinstance(v, bool)), "True or False")
STRING = ((lambda v: isinstance(v, str)), "a string")
IMAGE_SIZE = ((lambda v: isinstance(v, (tuple, list)) and len(v) == 2
               and all(_is_int(s) and s > 0 for s in v)), "(height, width), positive integers")
TRIPLE = ((lambda v: isinstance(v, (tuple, list)) and len(v) == 3
           and all(_is_number(s) for s in v)), "3 numbers (R, G, B)")
POSITIVE_TRIPLE = ((lambda v: TRIPLE[0](v) and min(v) > 0), "3 numbers > 0 (R, G, B)")
MILESTONES = ((lambda v: isinstance(v, (tuple, list)) and all(_is_int(m) and m >= 1 for m in v)
               and list(v) == sorted(v)), "increasing epochs >= 1, e.g. (40, 70)")

RULES: dict[str, tuple[Callable, str]] = {
    "seed": _int_at_least(0),
    "model.depth": _one_of(*sorted(STAGE_SIZES)),
    "model.last_stride": _one_of(1, 2),
    "model.stem_relu": BOOL,
    "model.dtype": _one_of(*DTYPES),
    "model.pretrained": STRING,
    "data.dataset": ((lambda v: isinstance(v, str) and bool(v)), "a dataset name"),
    "data.root": STRING,
    "data.image_size": IMAGE_SIZE,
    "data.ids_per_batch": _int_at_least(1),
    "data.instances_per_id": _int_at_least(1),
    "data.flip_prob": _number_in(0, 1),
    "data.pad": _int_at_least(0),
    "data.erase_prob": _number_in(0, 1),
    "data.erase_fill": _one_of("mean", "zero"),
    "data.mean": TRIPLE,
    "data.std": POSITIVE_TRIPLE,
    "data.augment_on": _one_of("auto", "host", "device"),
    "data.eval_batch_size": _int_at_least(1),
    "data.cache": BOOL,
    "optim.schedule": _one_of("warmup_multistep", "exp_decay"),
    "optim.base_lr": POSITIVE,
    "optim.weight_decay": NON_NEGATIVE,
    "optim.beta1": _number_in(0, 1, high_open=True),
    "optim.beta2": _number_in(0, 1, high_open=True),
    "optim.eps": POSITIVE,
    "train.epochs": _int_at_least(1),
    "train.log_every_steps": _int_at_least(1),
    "train.eval_every_epochs": _int_at_least(0),
    "train.checkpoint_every_epochs": _int_at_least(0),
    "train.checkpoint_every_steps": _int_at_least(0),
    "train.keep_checkpoints": _int_at_least(1),
    "eval.feat_norm": BOOL,
    "eval.distance": _one_of(*DISTANCES),
    "eval.flip": BOOL,
    "eval.max_rank": _int_at_least(1),
    "eval.rerank": BOOL,
    "eval.k1": _int_at_least(1),
    "eval.k2": _int_at_least(1),
    "eval.lambda_value": _number_in(0, 1),
    "eval.chunk_size": _int_at_least(1),
    "eval.dataset": STRING,
    "eval.root": STRING,
    "visualize.num_queries": _int_at_least(1),
    "visualize.select": _one_of("hardest", "random"),
    "visualize.top_k": _int_at_least(1),
    "visualize.seed": _int_at_least(0),
}
SCHEDULE_RULES = {
    "warmup_multistep": {"optim.warmup_epochs": _int_at_least(0),
                         "optim.warmup_factor": _number_in(0, 1),
                         "optim.milestones": MILESTONES, "optim.gamma": POSITIVE},
    "exp_decay": {"optim.decay_start_epoch": _int_at_least(1),
                  "optim.decay_total_epochs": _int_at_least(1)},
}
METHOD_RULES = {
    "bot": {"model.backbone": _one_of(*BACKBONES), "model.neck": _one_of(*NECKS),
            "model.neck_feat": _one_of(*NECK_FEATS), "eval.distance": _one_of(*GLOBAL_DISTANCES)},
    "aligned": {"model.local_dim": _int_at_least(1), "model.use_classifier": BOOL,
                "model.num_models": _int_at_least(1)},
}


def _lookup(config: ml_collections.ConfigDict, key: str):
    node = config
    for part in key.split("."):
        if part not in node:
            raise ConfigError(f"config.{key} is missing from the config")
        node = node[part]
    return node


def check_rules(config: ml_collections.ConfigDict, rules: dict[str, tuple[Callable, str]]) -> None:
    """ConfigError for the first key of `rules` whose value fails its check."""
    for key, (ok, expected) in rules.items():
        value = _lookup(config, key)
        if not ok(value):
            raise ConfigError(f"config.{key}={value!r}: expected {expected}")


def check_config(config: ml_collections.ConfigDict) -> None:
    """Every value the run reads, before anything is loaded or compiled (ConfigError)."""
    from reid_jax.methods import METHODS  # methods import models and losses

    method = _lookup(config, "method")
    if method not in METHODS:
        raise ConfigError(f"config.method={method!r}: expected one of {sorted(METHODS)}")
    check_rules(config, RULES)
    check_rules(config, SCHEDULE_RULES[config.optim.schedule])
    check_rules(config, METHOD_RULES.get(method, {}))
    METHODS[method].check_config(config)


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"a.b": value} of a nested dict (lists as tuples)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
    return flat


def check_resumable(config: ml_collections.ConfigDict, workdir: Path) -> str | None:
    """For a workdir that already holds a run: ConfigError naming every key that differs from the
    run's config.json (beyond RESUMABLE_KEYS); a message when the run is finished (None when
    there is something to train)."""
    saved_path = workdir / "config.json"
    if not saved_path.is_file() or not (workdir / "checkpoints").is_dir():
        return None
    saved = flatten(json.loads(saved_path.read_text()))
    current = flatten(json.loads(config.to_json_best_effort()))
    # A key the saved config lacks was added by a later version of reid_jax: its default is
    # what the run used.
    changed = [f"{key}: {saved[key]!r} -> {current.get(key, '<absent>')!r}"
               for key in sorted(saved)
               if saved[key] != current.get(key) and not key.startswith(RESUMABLE_KEYS)]
    if changed:
        raise ConfigError(f"{workdir} holds a run with another config; changed: "
                          + "; ".join(changed) + ". Resume with the run's config, or start a "
                          "new run with another --workdir")
    history = workdir / "evaluations.json"
    epochs = config.train.epochs
    if history.is_file() and str(epochs) in json.loads(history.read_text()):
        return (f"the run in {workdir} is finished ({epochs} epochs, results in "
                f"{workdir / 'results.json'}); pass --config.train.epochs=N to train longer")
    return None
