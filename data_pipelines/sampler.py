"""PK identity sampler with the reference epoch semantics (REFERENCE section 4), pure numpy.

One epoch: each id's image indices are shuffled (an id with fewer than K images is first sampled
K times with replacement) and cut into chunks of K, a last incomplete chunk dropped; then, while at
least P ids still hold chunks, P of them are chosen at random and give one chunk each. The number
of batches per epoch varies with the draws (Market-1501: about 183-186).

Epochs are counted from 1, as the lr schedule. The random draws of epoch e come from a generator
seeded with (seed, e), so the state {seed, epoch, step} alone resumes the exact sequence.
Multi-host: every host computes the same global batches and keeps its contiguous slice.
"""

from typing import NamedTuple

import numpy as np

SAMPLER_STREAM = 0  # first word after the seed in every SeedSequence this module creates


class SamplerStep(NamedTuple):
    """One batch: `epoch` (1-based), `step` in the epoch (0-based), `steps_in_epoch`,
    `indices` [P*K / host_count] int64 record indices (this host's slice)."""

    epoch: int
    step: int
    steps_in_epoch: int
    indices: np.ndarray


class PKSampler:
    """Endless PK batches over the records whose ids are `pids` [N].

    Iterating yields SamplerStep; `state_dict()` is the position of the next batch.
    """

    def __init__(self, pids: np.ndarray, ids_per_batch: int, instances_per_id: int, seed: int,
                 host_index: int = 0, host_count: int = 1):
        pids = np.asarray(pids).reshape(-1)
        self.P, self.K, self.seed = int(ids_per_batch), int(instances_per_id), int(seed)
        self.batch_size = self.P * self.K
        if self.P < 1 or self.K < 1:
            raise ValueError(f"ids_per_batch={self.P} and instances_per_id={self.K} must be >= 1")
        if self.seed < 0:
            raise ValueError(f"seed={self.seed} must be >= 0")
        if not 0 <= host_index < host_count or self.batch_size % host_count:
            raise ValueError(f"batch {self.batch_size} (ids_per_batch x instances_per_id) cannot "
                             f"be split for host {host_index} of {host_count}")
        order = np.argsort(pids, kind="stable")
        ids, starts = np.unique(pids[order], return_index=True)
        if len(ids) < self.P:
            raise ValueError(f"ids_per_batch={self.P} but the training set has only {len(ids)} "
                             "ids: no batch can be formed")
        self.groups = np.split(order, starts[1:])  # record indices of each id
        self.host_batch_size = self.batch_size // host_count
        self.host_start = host_index * self.host_batch_size
        self.epoch, self.step = 1, 0
        self._cached: tuple[int, np.ndarray] | None = None

    def epoch_batches(self, epoch: int) -> np.ndarray:
        """All global batches of `epoch`: [steps, P*K] int64 record indices, each row P ids x K
        images, the K images of an id adjacent."""
        rng = np.random.default_rng([self.seed, SAMPLER_STREAM, epoch])
        chunks = []
        for group in self.groups:
            if len(group) < self.K:
                group = rng.choice(group, size=self.K, replace=True)
            group = rng.permutation(group)
            chunks.append(group[:len(group) // self.K * self.K].reshape(-1, self.K))
        remaining = np.array([len(c) for c in chunks])
        taken = np.zeros(len(chunks), np.int64)
        available = np.arange(len(chunks))
        batches = []
        while len(available) >= self.P:
            chosen = available[rng.choice(len(available), size=self.P, replace=False)]
            batches.append(np.concatenate([chunks[i][taken[i]] for i in chosen]))
            taken[chosen] += 1
            available = available[taken[available] < remaining[available]]
        return np.stack(batches).astype(np.int64)

    def host_slice(self, batch: np.ndarray) -> np.ndarray:
        """This host's contiguous part of a global batch (leading axis P*K)."""
        return batch[self.host_start:self.host_start + self.host_batch_size]

    def _batches(self, epoch: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != epoch:
            self._cached = (epoch, self.epoch_batches(epoch))
        return self._cached[1]

    def __iter__(self) -> "PKSampler":
        return self

    def __next__(self) -> SamplerStep:
        batches = self._batches(self.epoch)
        if self.step >= len(batches):
            self.epoch, self.step = self.epoch + 1, 0
            batches = self._batches(self.epoch)
        out = SamplerStep(self.epoch, self.step, len(batches),
                          self.host_slice(batches[self.step]))
        self.step += 1
        return out

    def state_dict(self) -> dict[str, int]:
        """{"seed", "epoch", "step"}: the next batch to produce (JSON-able)."""
        return {"seed": self.seed, "epoch": self.epoch, "step": self.step}

    def state_after(self, item: SamplerStep) -> dict[str, int]:
        """The state that resumes right after the batch `item`."""
        if item.step + 1 < item.steps_in_epoch:
            return {"seed": self.seed, "epoch": item.epoch, "step": item.step + 1}
        return {"seed": self.seed, "epoch": item.epoch + 1, "step": 0}

    def load_state_dict(self, state: dict) -> None:
        """Continues from a `state_dict()`; ValueError when it was saved with another seed."""
        if int(state["seed"]) != self.seed:
            raise ValueError(f"sampler state was saved with seed {state['seed']}, this run uses "
                             f"seed {self.seed}")
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
