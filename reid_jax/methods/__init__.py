"""Re-ID methods, chosen by `config.method`: each builds its model(s) and extra trainable state
and gives the loss, the optimiser partition and the inference features (see base.Method)."""

import ml_collections

from reid_jax.methods.aligned import AlignedReIDMethod
from reid_jax.methods.base import LoadFn, Method, Variables
from reid_jax.methods.bot import BoT

METHODS = {"bot": BoT, "aligned": AlignedReIDMethod}


def get_method(config: ml_collections.ConfigDict, num_classes: int) -> Method:
    """The method `config.method` for `num_classes` training identities."""
    if config.method not in METHODS:
        raise ValueError(f"config.method={config.method!r}; expected one of {sorted(METHODS)}")
    return METHODS[config.method](config, num_classes)


__all__ = ["METHODS", "LoadFn", "Method", "Variables", "get_method"]
