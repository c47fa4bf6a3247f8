"""tf.data train and evaluation streams, yielding numpy batches (the contract of the train loop
and the evaluation).

Train: `make_train_iterator(...)` is an endless iterator of TrainBatch(epoch, step,
steps_in_epoch, batch, sampler_state):
  epoch           1-based epoch (the lr schedule's `e`); constant lr within it
  step            0-based batch index in the epoch; the epoch ends at step == steps_in_epoch - 1
  steps_in_epoch  batches in this epoch (varies from epoch to epoch, REFERENCE section 4)
  batch           {"image": float32 [B, H, W, 3] normalised NHWC, "label": int32 [B] in 0..C-1,
                   "camid": int32 [B]}, B = P * K / host_count (this host's contiguous slice);
                   with `augment=False`, "image" is the uint8 [B, H, W, 3] resized image and
                   "augment" holds the [B] parameters `augment.augment_batch` takes (flip,
                   crop_y, ...), for the augmentation to run on the accelerator
  sampler_state   JSON-able dict; pass it back as `sampler_state=` to resume right after this batch
The sampler's and the augmentation's draws are functions of (seed, epoch, step), so a resumed run
sees the same images with the same augmentation as an uninterrupted one, on any host count.

Evaluation: `make_eval_iterator(records, data_config)` is re-iterable; every pass yields, in record
order, {"image": float32 [B, H, W, 3], "pid": int32 [B], "camid": int32 [B], "path": object [B]
(str), "mask": bool [B]}, B = eval_batch_size, the last batch padded (image 0, pid -1, camid -1,
path "", mask False).

Pipeline: PK indices and augmentation parameters are drawn in numpy (a generator), images come
from the in-memory store of the train set (`config.data.cache`: decoded once, or kept encoded and
decoded per batch), and the augmentation runs as one XLA-compiled tf.data map per batch (faster
here than the same code under jax on the CPU: benchmarks/input_pipeline.py). Eval streams decode
on every pass (a few passes per run), in parallel, with prefetch.
"""

import functools
import math
import weakref
from collections.abc import Iterator
from typing import NamedTuple

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow.experimental.numpy as tnp

from data_pipelines.augment import AugmentConfig, augment_batch, normalize, sample_params
from data_pipelines.datasets.records import Records
from data_pipelines.images import ImageStore, checked, decode_resize, encoded_dataset
from data_pipelines.sampler import PKSampler

AUGMENT_STREAM = 1  # SeedSequence word for the augmentation draws (the sampler uses 0)
PARAM_DTYPES = {"flip": tf.bool, "crop_y": tf.int32, "crop_x": tf.int32, "erase_y": tf.int32,
                "erase_x": tf.int32, "erase_h": tf.int32, "erase_w": tf.int32}


class TrainBatch(NamedTuple):
    """One train batch and where it sits (see the module docstring)."""

    epoch: int
    step: int
    steps_in_epoch: int
    batch: dict[str, np.ndarray]
    sampler_state: dict[str, int]


def augment_params(seed: int, epoch: int, step: int, batch_size: int,
                   cfg: AugmentConfig) -> dict[str, np.ndarray]:
    """The augmentation parameters of the global batch (epoch, step): [P*K] arrays."""
    rng = np.random.default_rng([seed, AUGMENT_STREAM, epoch, step])
    return sample_params(rng, batch_size, cfg)


class TrainIterator:
    """Endless PK train batches (see the module docstring). `num_classes` = C,
    `batch_size` = this host's B."""

    def __init__(self, records: Records, data_config: ml_collections.ConfigDict, seed: int,
                 host_index: int = 0, host_count: int = 1, sampler_state: dict | None = None,
                 augment: bool = True):
        self.records = records
        self.augment = augment
        self.cfg = AugmentConfig.from_config(data_config)
        self.sampler = PKSampler(records.pids, data_config.ids_per_batch,
                                 data_config.instances_per_id, seed, host_index, host_count)
        if sampler_state is not None:
            self.sampler.load_state_dict(sampler_state)
        self.num_classes = int(records.pids.max()) + 1
        self.batch_size = self.sampler.host_batch_size
        self.store = ImageStore(records, self.cfg.image_size, cache=bool(data_config.cache))
        augment = tf.function(functools.partial(augment_batch, cfg=self.cfg, xp=tnp),
                              jit_compile=True)

        def load(plan: dict) -> dict:
            images = self.store.fetch(plan["indices"])
            if self.augment:
                images = augment(images, plan["params"])
            return {key: value for key, value in plan.items() if key not in ("indices", "params")
                    } | {"image": images, "augment": plan["params"]}

        dataset = (tf.data.Dataset.from_generator(self._plans,
                                                  output_signature=self._plan_signature())
                   .map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                   .prefetch(tf.data.AUTOTUNE))
        self._iterator = iter(dataset)
        # Drop the tf.data iterator while Python is still alive at exit (its generator's
        # finalizer needs the interpreter; otherwise TF logs an error at shutdown).
        weakref.finalize(self, self.__dict__.pop, "_iterator", None)

    def _plan_signature(self) -> dict:
        scalar, vector = tf.TensorSpec((), tf.int32), (self.batch_size,)
        return {"epoch": scalar, "step": scalar, "steps_in_epoch": scalar, "next_epoch": scalar,
                "next_step": scalar, "indices": tf.TensorSpec(vector, tf.int64),
                "label": tf.TensorSpec(vector, tf.int32), "camid": tf.TensorSpec(vector, tf.int32),
                "params": {key: tf.TensorSpec(vector, dtype)
                           for key, dtype in PARAM_DTYPES.items()}}

    def _plans(self) -> Iterator[dict]:
        """What each batch will hold: indices, labels and augmentation parameters (numpy)."""
        for item in self.sampler:
            params = augment_params(self.sampler.seed, item.epoch, item.step,
                                    self.sampler.batch_size, self.cfg)
            after = self.sampler.state_after(item)
            yield {"epoch": item.epoch, "step": item.step, "steps_in_epoch": item.steps_in_epoch,
                   "next_epoch": after["epoch"], "next_step": after["step"],
                   "indices": item.indices, "label": self.records.pids[item.indices],
                   "camid": self.records.camids[item.indices],
                   "params": {key: self.sampler.host_slice(value)
                              for key, value in params.items()}}

    def __iter__(self) -> "TrainIterator":
        return self

    def __next__(self) -> TrainBatch:
        plan = checked(self.records, lambda: next(self._iterator), 0, len(self.records))
        state = {"seed": self.sampler.seed, "epoch": int(plan["next_epoch"]),
                 "step": int(plan["next_step"])}
        batch = {key: plan[key].numpy() for key in ("image", "label", "camid")}
        if not self.augment:
            batch["augment"] = {key: value.numpy() for key, value in plan["augment"].items()}
        return TrainBatch(int(plan["epoch"]), int(plan["step"]), int(plan["steps_in_epoch"]),
                          batch, state)

    def steps_in_epoch(self, epoch: int) -> int:
        """Number of batches of `epoch` (computed, not consumed)."""
        return len(self.sampler.epoch_batches(epoch))


class EvalStream:
    """Query or gallery batches (see the module docstring); iterate it once per evaluation.
    `len()` is the number of batches."""

    def __init__(self, records: Records, data_config: ml_collections.ConfigDict):
        self.records = records
        self.batch_size = int(data_config.eval_batch_size)
        self.cfg = AugmentConfig.from_config(data_config)
        self._normalize = tf.function(functools.partial(normalize, cfg=self.cfg, xp=tnp),
                                      jit_compile=True)

    def __len__(self) -> int:
        return math.ceil(len(self.records) / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        size, batch_size = self.cfg.image_size, self.batch_size
        images = (encoded_dataset(self.records)
                  .map(lambda e: decode_resize(e, size), num_parallel_calls=tf.data.AUTOTUNE)
                  .batch(batch_size)
                  .map(self._normalize, num_parallel_calls=tf.data.AUTOTUNE)
                  .prefetch(2))
        iterator = iter(images)
        for start in range(0, len(self.records), batch_size):
            image = checked(self.records, lambda: next(iterator), start, batch_size).numpy()
            yield self._padded(start, image)

    def _padded(self, start: int, image: np.ndarray) -> dict[str, np.ndarray]:
        count, pad = len(image), self.batch_size - len(image)
        stop = start + count
        return {
            "image": np.concatenate([image, np.zeros((pad, *image.shape[1:]), image.dtype)]),
            "pid": np.concatenate([self.records.pids[start:stop], np.full(pad, -1, np.int32)]),
            "camid": np.concatenate([self.records.camids[start:stop],
                                     np.full(pad, -1, np.int32)]),
            "path": np.array(list(self.records.paths[start:stop]) + [""] * pad, dtype=object),
            "mask": np.arange(self.batch_size) < count,
        }


def make_train_iterator(records: Records, data_config: ml_collections.ConfigDict, seed: int,
                        host_index: int = 0, host_count: int = 1,
                        sampler_state: dict | None = None,
                        augment: bool = True) -> TrainIterator:
    """The endless train stream of this host (see the module docstring); `augment=False` leaves
    the augmentation to the consumer (uint8 images + parameters)."""
    return TrainIterator(records, data_config, seed, host_index, host_count, sampler_state,
                         augment)


def make_eval_iterator(records: Records, data_config: ml_collections.ConfigDict) -> EvalStream:
    """The query or gallery stream (see the module docstring)."""
    return EvalStream(records, data_config)
