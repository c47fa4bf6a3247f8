"""Feature extraction over an evaluation stream, with the model's variables placed on device once.

`embed_fn(variables, images)` is a method's inference forward (`Method.embed`): images
[B, H, W, 3] float32 (normalised) -> {"features": [B, D] (the global feature), and for methods
with a local branch "local_features": [B, S, d] (S horizontal stripes)}.

`embed_features` is the jitted forward of the evaluation (flip averaging, L2 normalisation);
`DeviceForward` runs it on this process's devices, for `extract_features` and
`reid_jax.FeatureExtractor` alike.
"""

import functools
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from reid_jax import parallel
from reid_jax.eval.distances import l2_normalize

EmbedFn = Callable[[dict, jax.Array], dict]
FEATURE_KEYS = ("features", "local_features")


def extract_features(embed_fn: EmbedFn, variables: dict, batches: Iterable[dict],
                     flip: bool = False, feat_norm: bool = True) -> dict:
    """Runs the model over an evaluation stream on this process's devices.

    Args:
      embed_fn: see the module docstring; jit-compiled here once per batch shape and embed_fn
        object (pass the same object for query and gallery to compile once).
      variables: the model's {"params", "batch_stats"}; put on the devices once here, replicated.
      batches: dicts with "image" [B, H, W, 3] float32, "pid" [B] int, "camid" [B] int, "path"
        [B] (str or bytes) and "mask" [B] bool (False marks padding rows, which are dropped).
        B divisible by the local device count shards the batch over them.
      flip: average the features of each image and of its horizontal flip (before normalising).
      feat_norm: L2-normalise the global feature and each stripe (`config.eval.feat_norm`).

    Returns numpy arrays in stream order: "features" [N, D] float32 (and "local_features"
    [N, S, d] float32 when the method has them), "pids" [N] int64, "camids" [N] int64, "paths"
    [N] str, and "feat_norm" (bool).
    """
    forward = DeviceForward(embed_fn, variables, flip, feat_norm)
    outputs, masks, pids, camids, paths = [], [], [], [], []
    for batch in batches:  # dispatch every batch before reading any result back
        outputs.append(forward(batch["image"]))
        mask = np.asarray(batch["mask"], bool)
        masks.append(mask)
        pids.append(np.asarray(batch["pid"])[mask])
        camids.append(np.asarray(batch["camid"])[mask])
        paths.extend(p.decode() if isinstance(p, bytes) else str(p)
                     for p in np.asarray(batch["path"], object)[mask])
    if not outputs:
        raise ValueError("extract_features: the batch stream is empty")
    result = {key: np.concatenate([np.asarray(out[key])[mask]
                                   for out, mask in zip(outputs, masks, strict=True)])
              for key in outputs[0]}
    return dict(result, pids=np.concatenate(pids).astype(np.int64),
                camids=np.concatenate(camids).astype(np.int64),
                paths=np.asarray(paths, dtype=str), feat_norm=feat_norm)


class DeviceForward:
    """`embed_features` of one model on this process's devices: the variables put on them once
    (replicated), each batch sharded over them when its size divides evenly (else run whole on
    the first). Compiles once per batch shape and `embed_fn` object."""

    def __init__(self, embed_fn: EmbedFn, variables: dict, flip: bool, feat_norm: bool):
        self.mesh = parallel.make_mesh(jax.local_devices())
        self.variables = jax.device_put(variables, parallel.replicated(self.mesh))
        self.embed_fn, self.flip, self.feat_norm = embed_fn, flip, feat_norm
        self._batch_sharding = parallel.data_sharding(self.mesh)

    @property
    def device_count(self) -> int:
        return self.mesh.devices.size

    def shard(self, batch: np.ndarray | jax.Array) -> np.ndarray | jax.Array:
        """`batch` [B, ...] split over the devices along B when B divides evenly (else as is)."""
        if len(batch) % self.device_count == 0:
            return jax.device_put(batch, self._batch_sharding)
        return batch

    def __call__(self, images: np.ndarray | jax.Array) -> dict:
        """[B, H, W, 3] float32 normalised -> {"features": [B, D], ...} float32 device arrays,
        dispatched asynchronously."""
        return embed_features(self.embed_fn, self.variables, self.shard(images), self.flip,
                              self.feat_norm)


@functools.partial(jax.jit, static_argnames=("embed_fn", "flip", "feat_norm"))
def embed_features(embed_fn: EmbedFn, variables: dict, images: jax.Array, flip: bool,
                   feat_norm: bool) -> dict:
    """[B, H, W, 3] float32 normalised -> {"features": [B, D], ...} float32: `embed_fn`'s
    features, averaged with those of the horizontally flipped images when `flip`, L2-normalised
    (the global feature and each stripe) when `feat_norm`."""
    feats = {key: value.astype(jnp.float32) for key, value in embed_fn(variables, images).items()}
    unknown = set(feats) - set(FEATURE_KEYS)
    if unknown:
        raise ValueError(f"embed_fn returned {sorted(unknown)}; expected keys of {FEATURE_KEYS}")
    if flip:
        flipped = embed_fn(variables, jnp.flip(images, axis=2))
        feats = {key: (value + flipped[key].astype(jnp.float32)) / 2.0
                 for key, value in feats.items()}
    if feat_norm:
        feats = {key: l2_normalize(value) for key, value in feats.items()}
    return feats
