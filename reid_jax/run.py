"""The wiring of data, method, trainer and evaluator: what `python -m reid_jax.main` runs, and
the same as a Python API.

    from reid_jax import run
    metrics = run.train(config, "runs/market")        # trains (resuming), evaluates, results
    results = run.evaluate(config, "runs/market")     # the latest run checkpoint (or `source`)
    path = run.extract(config, "runs/market", output="features.npz")
    path = run.export(config, "runs/market", output="runs/market/best_model")
    path = run.visualize(config, "runs/market")        # rank-list, CMC and metric PNGs

`source` (the command line's --checkpoint) names the model to evaluate / extract / export:
"latest" or "best" (the workdir's run checkpoints, best by mAP), a variables checkpoint
directory (`reid_jax.convert`, `--mode=export`), another run's workdir, or a PyTorch `.pth`.
Only `data_pipelines` reads files; it is imported here, never by the library modules.
"""

import json
import os
from pathlib import Path

import jax
import ml_collections
import numpy as np
from absl import logging

from reid_jax import checkpoint, torch_weights
from reid_jax.checkpoint import RunCheckpoints
from reid_jax.eval import Evaluator, flat_summary, format_report, summarize
from reid_jax.methods import METHODS, Method, Variables, get_method
from reid_jax.train import EvalHistory, train_and_evaluate
from reid_jax.validate import ConfigError, check_config, check_resumable

RUN_SELECTORS = ("latest", "best")


# --- data -----------------------------------------------------------------------------------

def load_dataset(dataset: str, root: str, config: ml_collections.ConfigDict, workdir: Path):
    """The data_pipelines Dataset `dataset` at `root`. The synthetic dataset is written into
    `workdir/synthetic` on first use when no root is given."""
    from data_pipelines.datasets import get_dataset  # TensorFlow only where data is read.

    options = {}
    if dataset == "synthetic":
        root = root or str(workdir / "synthetic")
        options = config.data.synthetic.to_dict()
    elif dataset == "pattern":
        options = config.data.pattern.to_dict()
    if not root:
        key = "config.eval.root" if dataset == config.eval.dataset else "config.data.root"
        raise ConfigError(
            f"{key} is empty: dataset {dataset!r} needs its folder (for example the one holding "
            f"bounding_box_train/, bounding_box_test/ and query/ for Market-1501 and "
            f"DukeMTMC-reID). Pass --{key}=/path/to/{dataset}")
    return get_dataset(dataset, root, **options)


def evaluation_dataset(config: ml_collections.ConfigDict, workdir: Path):
    """The dataset whose query / gallery are evaluated: config.eval.dataset (cross-domain) or
    the training dataset."""
    if config.eval.dataset:
        return load_dataset(config.eval.dataset, config.eval.root, config, workdir)
    return load_dataset(config.data.dataset, config.data.root, config, workdir)


def make_evaluator(method: Method, dataset, config: ml_collections.ConfigDict) -> Evaluator:
    """The evaluator of `dataset`'s query and gallery, every image checked first."""
    from data_pipelines.pipeline import make_eval_iterator
    from data_pipelines.verify import verify_images

    for split in ("query", "gallery"):
        verify_images(getattr(dataset, split), split)
    return Evaluator(method.embed, make_eval_iterator(dataset.query, config.data),
                     make_eval_iterator(dataset.gallery, config.data), config.eval)


# --- models to evaluate ----------------------------------------------------------------------

def pretrained_loader(source: str):
    """`config.model.pretrained` as a Method `load` function: a PyTorch .pth (torchvision
    ImageNet ResNet, or a whole model of the method's layout) or a variables checkpoint."""
    def load(target: Variables) -> Variables:
        target = jax.tree.map(np.asarray, target)
        if Path(source).is_dir():
            return checkpoint.load_variables(source, target=target)
        return torch_weights.load_torch_weights(source, target)

    return load


def load_model(config: ml_collections.ConfigDict, workdir: Path,
               source: str | None) -> tuple[Method, Variables, str]:
    """(method, one model's variables, where they came from) for eval / extract / export, from
    `source` (see the module docstring; None means "latest")."""
    source = source or "latest"
    method_class = METHODS[config.method]
    path = Path(source)
    if source in RUN_SELECTORS or (path / "checkpoints").is_dir():
        run_dir = workdir if source in RUN_SELECTORS else path
        runs = RunCheckpoints(run_dir / "checkpoints", config.train.keep_checkpoints)
        try:
            step = _run_step(runs, run_dir, source)
            model_params, batch_stats = runs.restore_model_variables(step)
        finally:
            runs.close()
        method = get_method(config, method_class.num_classes_in(model_params))
        variables = method.model_variables({"model": model_params}, batch_stats)[0]
        origin = runs.directory / str(step)
        checkpoint.check_tree_fits(variables, _abstract_variables(method, config), origin)
        return method, variables, str(origin)
    if checkpoint.is_variables_checkpoint(path):
        variables = checkpoint.load_variables(path)
        method = get_method(config, method_class.num_classes_in(variables["params"]))
        checkpoint.check_tree_fits(variables, _abstract_variables(method, config), path)
        return method, variables, str(path)
    if path.is_file():
        state = torch_weights.load_pth(path)
        method = get_method(config, method_class.num_classes_in_torch(state))
        variables = torch_weights.torch_to_flax(state, _abstract_variables(method, config),
                                                source=str(path))
        return method, variables, str(path)
    raise FileNotFoundError(f"--checkpoint={source}: not 'latest' or 'best', nor a variables "
                            "checkpoint, a run workdir or a .pth file")


def _run_step(runs: RunCheckpoints, run_dir: Path, source: str) -> int:
    """The run checkpoint `source` selects ("best", else the latest)."""
    if runs.latest_step() is None:
        raise FileNotFoundError(f"no run checkpoint in {runs.directory}: train first, or pass "
                                "--checkpoint=<variables checkpoint or .pth>")
    if source != "best":
        return runs.latest_step()
    step = EvalHistory(run_dir / "evaluations.json").best_step()
    if step is None or step not in runs.steps():
        raise FileNotFoundError(f"no evaluated checkpoint in {runs.directory} to call best; "
                                "use --checkpoint=latest")
    return step


def _abstract_variables(method: Method, config: ml_collections.ConfigDict) -> Variables:
    """The first model's variables as shapes (nothing computed)."""
    def first_model() -> Variables:
        params, batch_stats = method.init(jax.random.PRNGKey(config.seed))
        return method.model_variables(params, batch_stats)[0]

    return jax.eval_shape(first_model)


# --- modes ----------------------------------------------------------------------------------

def _prepare(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> Path:
    check_config(config)
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    logging.info("JAX %s, %d devices (%s), %d processes", jax.__version__, jax.device_count(),
                 jax.devices()[0].platform, jax.process_count())
    return workdir


def _write_json(path: Path, payload: dict) -> None:
    """`payload` as JSON at `path`, atomically, by process 0."""
    if jax.process_index() == 0:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
        os.replace(tmp, path)


def _report(workdir: Path, results: dict, name: str, extra: dict) -> None:
    """The report on stdout and `workdir/<name>` (summary in percent + extra)."""
    if jax.process_index() == 0:
        print(format_report(results), flush=True)
    _write_json(workdir / name, dict(extra, **summarize(results)))


def train(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
    """Trains (resuming when `workdir` holds this run's checkpoints) and evaluates; the final
    evaluation, with and without re-ranking, goes to `workdir/results.json`. Returns the last
    evaluation's scalar metrics (percent). A finished run is not trained again."""
    from data_pipelines.pipeline import make_train_iterator
    from data_pipelines.verify import verify_images

    workdir = _prepare(config, workdir)
    augment = device_augmentation(config)
    finished = check_resumable(config, workdir)
    if finished is not None:
        print(finished, flush=True)
        return EvalHistory(workdir / "evaluations.json").entries[config.train.epochs]["metrics"]
    _write_json(workdir / "config.json", json.loads(config.to_json_best_effort()))
    train_set = load_dataset(config.data.dataset, config.data.root, config, workdir)
    if not config.data.cache:  # cached images are all decoded before training anyway
        verify_images(train_set.train, "train")
    eval_set = evaluation_dataset(config, workdir)
    method = get_method(config, train_set.num_train_ids)
    evaluator = make_evaluator(method, eval_set, config)

    def stream(sampler_state):
        return iter(make_train_iterator(train_set.train, config.data, config.seed,
                                        jax.process_index(), jax.process_count(),
                                        sampler_state, augment=augment is None))

    def evaluate_models(models: list[Variables], final: bool) -> dict:
        scalars = {}
        for index, variables in enumerate(models):
            results = evaluator(variables, rerank=final or config.eval.rerank)
            prefix = f"model{index}/" if index else ""
            scalars.update({prefix + k: v for k, v in flat_summary(results).items()})
            if final and index == 0:
                _report(workdir, results, "results.json",
                        {"epochs": config.train.epochs,
                         "dataset": config.eval.dataset or config.data.dataset})
        return scalars

    load = pretrained_loader(config.model.pretrained) if config.model.pretrained else None
    return train_and_evaluate(config, workdir, method, stream, evaluate_models, load, augment)


def device_augmentation(config: ml_collections.ConfigDict):
    """`config.data.augment_on`: the on-device train augmentation (uint8 batch + parameters ->
    normalised float32 images, the same pixels tf.data makes) for "device", and for "auto" on
    an accelerator; None where tf.data augments (on the CPU that is faster)."""
    import jax.numpy as jnp

    from data_pipelines.augment import AugmentConfig, augment_batch

    where = config.data.augment_on
    if where == "host" or (where == "auto" and jax.default_backend() == "cpu"):
        return None
    cfg = AugmentConfig.from_config(config.data)

    def augment(batch: dict) -> jax.Array:
        return augment_batch(batch["image"], batch["augment"], cfg, jnp)

    return augment


def evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
             source: str | None = None) -> dict:
    """Evaluates the model `source` (default: the latest run checkpoint) on config.eval.dataset
    (or the training dataset), re-ranked too when config.eval.rerank; the report goes to stdout
    and `workdir/eval_results.json`. Returns the `evaluate_features` results."""
    workdir = _prepare(config, workdir)
    method, variables, origin = load_model(config, workdir, source)
    eval_set = evaluation_dataset(config, workdir)
    results = make_evaluator(method, eval_set, config)(variables, config.eval.rerank)
    _report(workdir, results, "eval_results.json",
            {"checkpoint": origin, "dataset": config.eval.dataset or config.data.dataset})
    return results


def extract(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
            source: str | None = None, output: str | os.PathLike | None = None) -> Path:
    """Writes the query and gallery features of the model `source` to `output` (default
    `workdir/features.npz`): for each split, `<split>_features` [N, D] float32 (and
    `<split>_local_features` for a local branch), `_pids`, `_camids`, `_paths`."""
    workdir = _prepare(config, workdir)
    output = Path(output or workdir / "features.npz").resolve()
    if not output.parent.is_dir():
        raise FileNotFoundError(f"--output={output}: folder {output.parent} does not exist")
    method, variables, _ = load_model(config, workdir, source)
    evaluator = make_evaluator(method, evaluation_dataset(config, workdir), config)
    arrays = {}
    for split, features in zip(("query", "gallery"), evaluator.features(variables),
                               strict=True):
        arrays.update({f"{split}_{k}": np.asarray(v) for k, v in features.items()})
    if jax.process_index() == 0:
        np.savez(output, **arrays)
        print(f"wrote {output}: {len(arrays['query_features'])} query and "
              f"{len(arrays['gallery_features'])} gallery features", flush=True)
    return output


def export(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
           source: str | None = "best", output: str | os.PathLike | None = None) -> Path:
    """Writes the model `source` (default: the best run checkpoint by mAP) as a variables
    checkpoint at `output` (default `workdir/best_model`, replaced if it exists), for
    `--checkpoint=`, `config.model.pretrained` or reid_jax.export."""
    workdir = _prepare(config, workdir)
    output = checkpoint.check_destination(output or workdir / "best_model", overwrite=True)
    method, variables, origin = load_model(config, workdir, source or "best")
    metadata = {"source": origin, "method": config.method, "num_classes": method.num_classes,
                "model": config.model.to_dict()}
    checkpoint.save_variables(output, jax.device_get(variables), metadata, overwrite=True)
    if jax.process_index() == 0:
        print(f"wrote {output} from {origin}", flush=True)
    return output


def visualize(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
              source: str | None = None, output: str | os.PathLike | None = None) -> Path:
    """Pictures of the model `source`'s ranking (or of the features of an extract `.npz`
    passed as `source`) into `output` (default `workdir/visualize/`): `ranks.png`, the query and
    its top-k gallery images for `config.visualize.num_queries` queries (the hardest by AP, or
    random), bordered green (true match) / red (wrong id) / grey (junk: same id and camera);
    `cmc.png`; and `curves/<metric>.png` for every train and eval metric of
    `workdir/metrics.jsonl` when there is one."""
    from reid_jax.eval import distance_matrix, evaluate_rankings
    from reid_jax.eval import visualize as pictures

    workdir = _prepare(config, workdir)
    output = Path(output or workdir / "visualize").resolve()
    if source and source.endswith(".npz"):
        if not Path(source).is_file():
            raise FileNotFoundError(f"--checkpoint={source}: no such features file")
        with np.load(source) as saved:
            splits = [{key.removeprefix(f"{split}_"): saved[key] for key in saved.files
                       if key.startswith(f"{split}_")} for split in ("query", "gallery")]
    else:
        method, variables, _ = load_model(config, workdir, source)
        evaluator = make_evaluator(method, evaluation_dataset(config, workdir), config)
        splits = list(evaluator.features(variables))
    query, gallery = splits
    distmat = distance_matrix(query, gallery, config.eval.distance, config.eval.chunk_size)
    ids = (query["pids"], gallery["pids"], query["camids"], gallery["camids"])
    metrics = evaluate_rankings(distmat, *ids, max_rank=config.eval.max_rank)
    options = config.visualize
    queries = (pictures.hardest_queries(metrics["all_AP"], options.num_queries)
               if options.select == "hardest"
               else pictures.random_queries(len(query["pids"]), options.num_queries,
                                            options.seed))
    if jax.process_index() == 0:
        output.mkdir(parents=True, exist_ok=True)
        pictures.rank_grid(query["paths"], query["pids"], query["camids"], gallery["paths"],
                           gallery["pids"], gallery["camids"], distmat, queries,
                           top_k=options.top_k, cell_size=tuple(config.data.image_size),
                           path=output / "ranks.png")
        pictures.cmc_curve(metrics["cmc"], metrics["mAP"], path=output / "cmc.png")
        if (workdir / "metrics.jsonl").is_file():
            pictures.metric_curves(workdir / "metrics.jsonl", output / "curves")
        print(f"wrote {output}: ranks.png ({len(queries)} {options.select} queries), cmc.png"
              + (", curves/" if (workdir / "metrics.jsonl").is_file() else ""), flush=True)
    return output


MODES = {"train": train, "eval": evaluate, "extract": extract, "export": export,
         "visualize": visualize}
