"""Worker of tests/test_parallel.py: BoT train steps of a tiny ResNet-18 on a data-parallel mesh.

The caller sets `XLA_FLAGS=--xla_force_host_platform_device_count=N` (it must be set before JAX
initialises, hence a subprocess) and `PYTHONPATH` to the repository root, and writes the initial
state once with `save_initial_state` (imported from this module). Every process loads that state
(cast to float64 with --x64), builds the same global batches from a fixed seed, replicates the
state over the mesh, feeds its contiguous slice of every global batch through
`parallel.global_batch` and runs `parallel.jit_sharded_step`. Process 0 writes one npz per mesh
to `{out}_{mesh size}.npz`:

  metrics/{name}      [steps] float64, the step's metrics (`loss`, `id_loss`, ...)
  state/{path}        the final TrainState's leaves (params, batch_stats, opt_state), `/`-joined
  batch_devices       int, devices the image batch was sharded over
  batch_shard_rows    int, rows of the image batch each device held
  num_processes       int, `jax.process_count()`
  indivisible_error   str, message of `check_batch_divisible(INDIVISIBLE_BATCH, mesh, ...)`,
                      "" when it did not raise

Usage:
  train_steps.py --init INIT.npz --out DIR/run --mesh-sizes 1,8 --steps 2 [--x64]
  train_steps.py --init INIT.npz --out DIR/run --mesh-sizes all --num-processes 2 \
      --process-id 0 --coordinator 127.0.0.1:PORT
"""

import argparse
from pathlib import Path

import jax
import ml_collections
import numpy as np
import optax
from flax import linen as nn

from configs.market import get_config
from reid_jax import optim, parallel
from reid_jax.models import create_model, init_variables
from reid_jax.train import TrainState, create_train_state, init_centers, make_train_step

NUM_IDS, P, K = 8, 4, 4
IMAGE_SIZE = (64, 64)
LEARNING_RATE = 3.5e-4
BATCH_KEYS = "data.ids_per_batch * data.instances_per_id"
INDIVISIBLE_BATCH = P * K - 2  # 14: divides over 1 device, not over 4 or 8


def tiny_config() -> ml_collections.ConfigDict:
    """configs/market.py with a ResNet-18 at 64x64 and a 4 x 4 PK batch."""
    config = get_config()
    config.model.depth = 18
    config.data.image_size = IMAGE_SIZE
    config.data.ids_per_batch, config.data.instances_per_id = P, K
    return config


def build(dtype) -> tuple[ml_collections.ConfigDict, nn.Module, optax.GradientTransformation]:
    """(config, model computing in `dtype` with `dtype` parameters, optimiser)."""
    config = tiny_config()
    model = create_model(config.model, NUM_IDS).clone(dtype=dtype, param_dtype=dtype)
    return config, model, optim.make_optimizer(config)


def initial_state(model: nn.Module, tx: optax.GradientTransformation) -> TrainState:
    """The fresh TrainState (fixed seeds), its Adam lr set to LEARNING_RATE."""
    variables = init_variables(model, jax.random.PRNGKey(0), IMAGE_SIZE)
    centers = init_centers(jax.random.PRNGKey(2), NUM_IDS, 512).astype(model.param_dtype)
    state = create_train_state(variables, centers, tx)
    return state.replace(opt_state=optim.set_learning_rate(state.opt_state, LEARNING_RATE))


def save_initial_state(path: Path) -> None:
    """Writes the float32 initial state to `path` (npz, keys as `flatten(state, "state")`).
    Made once by the caller, so no worker pays for compiling the model's initialiser."""
    _, model, tx = build(np.float32)
    np.savez(path, **flatten(initial_state(model, tx), "state"))


def load_initial_state(path: str | Path, model: nn.Module,
                       tx: optax.GradientTransformation) -> TrainState:
    """The state saved by `save_initial_state`, leaves cast to the model's dtypes (numpy)."""
    abstract = jax.eval_shape(lambda: initial_state(model, tx))
    keys = flatten(abstract, "state", to_numpy=False)
    with np.load(path) as saved:
        leaves = [np.asarray(saved[key], leaf.dtype) for key, leaf in keys.items()]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(abstract), leaves)


def make_batches(steps: int, dtype) -> list[dict[str, np.ndarray]]:
    """`steps` global PK batches: image [P*K, H, W, 3] `dtype` N(0, 1), label [P*K] int32."""
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(steps):
        ids = rng.choice(NUM_IDS, P, replace=False)
        batches.append({
            "image": rng.normal(size=(P * K, *IMAGE_SIZE, 3)).astype(dtype),
            "label": np.repeat(ids, K).astype(np.int32),
        })
    return batches


def flatten(tree, prefix: str, to_numpy: bool = True) -> dict:
    """{prefix/path: leaf} of a pytree in flattening order, leaves as numpy arrays (replicated
    arrays read locally) unless `to_numpy` is False."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {prefix + "/" + "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path):
            np.asarray(leaf) if to_numpy else leaf for path, leaf in leaves}


def run_on_mesh(mesh: jax.sharding.Mesh, model: nn.Module, tx: optax.GradientTransformation,
                config: ml_collections.ConfigDict, state0: TrainState,
                batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Runs len(batches) sharded steps from host state `state0`; the npz content (see above)."""
    try:
        parallel.check_batch_divisible(INDIVISIBLE_BATCH, mesh, BATCH_KEYS)
        indivisible_error = ""
    except ValueError as error:
        indivisible_error = str(error)
    parallel.check_batch_divisible(P * K, mesh, BATCH_KEYS)

    step = parallel.jit_sharded_step(make_train_step(model, tx, config), mesh)
    state = parallel.replicate(state0, mesh)
    rng = parallel.replicate(jax.random.PRNGKey(1), mesh)
    rows = P * K // jax.process_count()
    start = jax.process_index() * rows
    metrics = []
    for batch in batches:
        local = {key: value[start:start + rows] for key, value in batch.items()}
        sharded = parallel.global_batch(local, mesh)
        state, step_metrics = step(state, sharded, rng)
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
    config, model, tx = build(dtype)
    state0 = load_initial_state(args.init, model, tx)
    batches = make_batches(args.steps, dtype)

    devices = jax.devices()
    sizes = ([len(devices)] if args.mesh_sizes == "all"
             else [int(n) for n in args.mesh_sizes.split(",")])
    for size in sizes:
        mesh = parallel.make_mesh(devices[:size])
        result = run_on_mesh(mesh, model, tx, config, state0, batches)
        if jax.process_index() == 0:
            np.savez(f"{args.out}_{size}.npz", **result)
    if args.num_processes > 1:
        jax.distributed.shutdown()


if __name__ == "__main__":
    main()
