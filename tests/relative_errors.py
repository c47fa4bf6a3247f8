"""Relative errors of arrays and of whole torch state dicts, for the trajectory and parallelism
tests (numpy and torch tensors alike; torch only where state dicts are compared)."""

import numpy as np


def relative_error(actual, expected) -> float:
    """||actual - expected|| / ||expected|| (Frobenius, the whole tensor, in float64); an
    expected 0 needs an exact 0."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-30))


def state_dict_errors(expected: dict, actual: dict, initial: dict) -> tuple[dict, dict]:
    """Per key of the torch state dict `expected` (`num_batches_tracked` skipped): the relative
    error of `actual` against it, and how far it moved from `initial` (the same measure), so a
    test can show that the disagreement is far below the change."""
    errors, moved = {}, {}
    for key, value in expected.items():
        if key.endswith("num_batches_tracked"):
            continue
        errors[key] = relative_error(actual[key].numpy(), value.numpy())
        moved[key] = relative_error(value.numpy(), initial[key].numpy())
    return errors, moved
