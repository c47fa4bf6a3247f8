"""Worker of tests/test_parallel.py: train steps of a tiny ResNet-18 re-ID method on a
data-parallel mesh: BoT (`--method bot`, the default) or AlignedReID with 2 mutually learning
models (`--method aligned`; sizes in SETUPS).

The caller sets `XLA_FLAGS=--xla_force_host_platform_device_count=N` (it must be set before JAX
initialises, hence a subprocess) and `PYTHONPATH` to the repository root, and writes the initial
state once with `save_initial_state(path, method)` (imported from this module). Every process
loads that state (cast to float64 with --x64), builds the same global batches from a fixed
seed, replicates the state over the mesh, feeds its contiguous slice of every global batch
through `parallel.global_batch` and runs `parallel.jit_sharded_step`. Process 0 writes one npz
per mesh to `{out}_{mesh size}.npz`:

  metrics/{name}      [steps] float64, the step's metrics (`loss`, `id_loss`, ...)
  state/{path}        the final TrainState's leaves (params, batch_stats, opt_state), `/`-joined
  batch_devices       int, devices the image batch was sharded over
  batch_shard_rows    int, rows of the image batch each device held
  num_processes       int, `jax.process_count()`
  indivisible_error   str, message of `check_batch_divisible(P * K - 2, mesh, ...)`, "" when
                      it did not raise

Usage:
  train_steps.py --init INIT.npz --out DIR/run --mesh-sizes 1,8 --steps 2 [--x64]
  train_steps.py --method aligned --init ALIGNED_INIT.npz --out DIR/aligned --mesh-sizes 1,8 \
      --steps 1
  train_steps.py --init INIT.npz --out DIR/run --mesh-sizes all --num-processes 2 \
      --process-id 0 --coordinator 127.0.0.1:PORT
"""

import argparse
import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from configs import aligned
from configs.market import get_config
from reid_jax import optim, parallel
from reid_jax.methods import Method, get_method
from reid_jax.methods.bot import init_centers
from reid_jax.models import init_variables
from reid_jax.train import TrainState, create_train_state, make_train_step

NUM_IDS = 8
EPOCH = 10  # both methods train at their full lr (BoT 3.5e-4, AlignedReID 2e-4)
BATCH_KEYS = "data.ids_per_batch * data.instances_per_id"
METHODS = ("bot", "aligned")


@dataclasses.dataclass(frozen=True)
class Setup:
    """A method's tiny run: a P x K batch of (H, W) images."""

    p: int
    k: int
    image_size: tuple[int, int]

    @property
    def batch(self) -> int:
        return self.p * self.k

    @property
    def indivisible_batch(self) -> int:
        """P * K - 2: divides over 1 device, not over 4 or 8 (14 for BoT)."""
        return self.p * self.k - 2


SETUPS = {
    "bot": Setup(4, 4, (64, 64)),  # last stride 1: a 4 x 4 map
    # last stride 1: a 4 x 3 map (4 stripes); one image per device on 8 devices, so BN
    # statistics, mining and the N x N local distances are only right over the global batch.
    "aligned": Setup(2, 4, (64, 48)),
}
# BoT's, kept as module names.
P, K, IMAGE_SIZE = SETUPS["bot"].p, SETUPS["bot"].k, SETUPS["bot"].image_size
INDIVISIBLE_BATCH = SETUPS["bot"].indivisible_batch
FC_SCALE = 100.0  # AlignedReID's classifier N(0, 0.001^2) -> N(0, 0.1^2): logits O(1)


def tiny_config(method: str = "bot") -> ml_collections.ConfigDict:
    """BoT: configs/market.py with a ResNet-18 at 64x64 and a 4 x 4 PK batch. AlignedReID:
    configs/aligned.py with 2 mutually learning ResNet-18s (last stride 1) at 64x48, a 2 x 4 PK
    batch and every loss term on (the local triplet with its own hard mining, and the
    local-distance mutual loss)."""
    setup = SETUPS[method]
    if method == "bot":
        config = get_config()
    else:
        config = aligned.get_config()
        config.model.last_stride = 1
        config.model.num_models = 2
        config.loss.update(local_weight=1.0, id_weight=1.0, pm_weight=1.0, gdm_weight=1.0,
                           ldm_weight=1.0, local_own_hard_mining=True, normalize_feature=True)
    config.model.depth = 18
    config.data.image_size = setup.image_size
    config.data.ids_per_batch, config.data.instances_per_id = setup.p, setup.k
    return config


def build(dtype, method: str = "bot") -> tuple[ml_collections.ConfigDict, Method,
                                               optax.GradientTransformation, np.ndarray]:
    """(config, `method` whose model computes in `dtype` with `dtype` parameters, optimiser, lr
    table)."""
    config = tiny_config(method)
    reid_method = get_method(config, NUM_IDS)
    reid_method.model = reid_method.model.clone(dtype=dtype, param_dtype=dtype)
    lr_table = optim.learning_rates(config.optim, config.train.epochs)
    return config, reid_method, reid_method.optimizer(lr_table), lr_table


def initial_state(method: Method, tx: optax.GradientTransformation) -> TrainState:
    """The fresh TrainState (fixed seeds) in epoch EPOCH. BoT: the model's initial variables
    and N(0, 1) centers. AlignedReID: `method.init` (the models stacked), the classifier scaled
    by FC_SCALE so that the probability mutual loss is not a difference of near-uniform
    distributions (at the initial scale it is ~1e-6, all float32 cancellation)."""
    if method.name == "aligned":
        params, batch_stats = method.init(jax.random.PRNGKey(0))
        fc = params["model"]["fc"]
        params["model"]["fc"] = dict(fc, kernel=fc["kernel"] * FC_SCALE)
    else:
        model = method.model
        image_size = SETUPS[method.name].image_size
        variables = init_variables(model, jax.random.PRNGKey(0), image_size)
        centers = init_centers(jax.random.PRNGKey(2), NUM_IDS, 512).astype(model.param_dtype)
        params = {"model": variables["params"], "centers": centers}
        batch_stats = variables["batch_stats"]
    state = create_train_state(params, batch_stats, tx, jax.random.PRNGKey(1))
    return state.replace(epoch=jnp.asarray(EPOCH, jnp.int32))


def save_initial_state(path: Path, method: str = "bot") -> None:
    """Writes `method`'s float32 initial state to `path` (npz, keys as `flatten(state,
    "state")`). Made once by the caller, so no worker pays for compiling the model's
    initialiser."""
    _, reid_method, tx, _ = build(np.float32, method)
    np.savez(path, **flatten(initial_state(reid_method, tx), "state"))


def load_initial_state(path: str | Path, method: Method,
                       tx: optax.GradientTransformation) -> TrainState:
    """The state saved by `save_initial_state`, leaves cast to the model's dtypes (numpy)."""
    abstract = jax.eval_shape(lambda: initial_state(method, tx))
    keys = flatten(abstract, "state", to_numpy=False)
    with np.load(path) as saved:
        leaves = [np.asarray(saved[key], leaf.dtype) for key, leaf in keys.items()]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(abstract), leaves)


def make_batches(steps: int, dtype, setup: Setup = SETUPS["bot"]) -> list[dict[str, np.ndarray]]:
    """`steps` global PK batches of `setup`: image [P*K, H, W, 3] `dtype` N(0, 1), label [P*K]
    int32 (P of NUM_IDS ids, K each, contiguous)."""
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(steps):
        ids = rng.choice(NUM_IDS, setup.p, replace=False)
        batches.append({
            "image": rng.normal(size=(setup.batch, *setup.image_size, 3)).astype(dtype),
            "label": np.repeat(ids, setup.k).astype(np.int32),
        })
    return batches


def flatten(tree, prefix: str, to_numpy: bool = True) -> dict:
    """{prefix/path: leaf} of a pytree in flattening order, leaves as numpy arrays (replicated
    arrays read locally) unless `to_numpy` is False."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {prefix + "/" + "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path):
            np.asarray(leaf) if to_numpy else leaf for path, leaf in leaves}


def run_on_mesh(mesh: jax.sharding.Mesh, method: Method, tx: optax.GradientTransformation,
                lr_table: np.ndarray, state0: TrainState,
                batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Runs len(batches) sharded steps from host state `state0`; the npz content (see above)."""
    setup = SETUPS[method.name]
    try:
        parallel.check_batch_divisible(setup.indivisible_batch, mesh, BATCH_KEYS)
        indivisible_error = ""
    except ValueError as error:
        indivisible_error = str(error)
    parallel.check_batch_divisible(setup.batch, mesh, BATCH_KEYS)

    step = parallel.jit_sharded_step(make_train_step(method, tx, lr_table), mesh)
    state = parallel.replicate(state0, mesh)
    rows = setup.batch // jax.process_count()
    start = jax.process_index() * rows
    metrics = []
    for batch in batches:
        local = {key: value[start:start + rows] for key, value in batch.items()}
        sharded = parallel.global_batch(local, mesh)
        state, step_metrics = step(state, sharded)
        metrics.append({key: float(value) for key, value in step_metrics.items()})
    result = {f"metrics/{key}": np.array([m[key] for m in metrics]) for key in metrics[0]}
    result.update(flatten(state, "state"))
    result["batch_devices"] = np.array(len(sharded["image"].sharding.device_set))
    result["batch_shard_rows"] = np.array(sharded["image"].addressable_shards[0].data.shape[0])
    result["num_processes"] = np.array(jax.process_count())
    result["indivisible_error"] = np.array(indivisible_error)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=METHODS, default="bot")
    parser.add_argument("--init", required=True, help="npz written by save_initial_state")
    parser.add_argument("--out", required=True, help="output prefix: {out}_{mesh size}.npz")
    parser.add_argument("--mesh-sizes", default="all",
                        help="comma list of mesh sizes (first devices), or `all` devices")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--x64", action="store_true", help="float64 model, data and state")
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--coordinator", default="", help="host:port of process 0")
    args = parser.parse_args()

    if args.num_processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=args.coordinator,
                                   num_processes=args.num_processes, process_id=args.process_id)
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    dtype = np.float64 if args.x64 else np.float32
    _, method, tx, lr_table = build(dtype, args.method)
    state0 = load_initial_state(args.init, method, tx)
    batches = make_batches(args.steps, dtype, SETUPS[args.method])

    devices = jax.devices()
    sizes = ([len(devices)] if args.mesh_sizes == "all"
             else [int(n) for n in args.mesh_sizes.split(",")])
    for size in sizes:
        mesh = parallel.make_mesh(devices[:size])
        result = run_on_mesh(mesh, method, tx, lr_table, state0, batches)
        if jax.process_index() == 0:
            np.savez(f"{args.out}_{size}.npz", **result)
    if args.num_processes > 1:
        jax.distributed.shutdown()


if __name__ == "__main__":
    main()
