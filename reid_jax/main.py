"""reid_jax command line: train, evaluate or extract features from a config.

  python -m reid_jax.main --config=configs/demo.py --workdir=runs/demo
  python -m reid_jax.main --config=configs/market.py --workdir=runs/market \\
      --config.data.root=/data/Market-1501-v15.09.15
  python -m reid_jax.main --config=configs/market.py --workdir=runs/market --mode=eval \\
      --config.eval.rerank=True [--checkpoint=DIR] [--config.eval.dataset=dukemtmcreid \\
      --config.eval.root=/data/DukeMTMC-reID]
  python -m reid_jax.main ... --mode=extract --output=features.npz

`--checkpoint` is a variables checkpoint (`python -m reid_jax.convert`, or `best_model/`
written by training); without it, eval and extract use the latest run checkpoint in --workdir.
Multi-host: pass --coordinator_address, --num_processes and --process_id on every host (or
nothing where the cluster sets them up for jax.distributed.initialize()).
"""

import functools
import json
import logging as pylogging
import os
from pathlib import Path

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from reid_jax import checkpoint, evaluate, optim, parallel, torch_weights
from reid_jax.models import create_model, feature_dim, init_variables
from reid_jax.train import create_train_state, init_centers, train_and_evaluate, variables_of
from reid_jax.train_checkpoint import RunCheckpoints


def load_dataset(dataset: str, root: str, config: ml_collections.ConfigDict, workdir: Path):
    """The data_pipelines Dataset for `dataset` at `root`. The synthetic dataset is written
    into `workdir/synthetic` on first use when no root is given."""
    from data_pipelines.datasets import get_dataset  # TensorFlow only where data is read.

    options = {}
    if dataset == "synthetic":
        root = root or str(workdir / "synthetic")
        options = config.data.synthetic.to_dict()
    elif not root:
        raise ValueError(
            f"config.data.root is empty: dataset {dataset!r} needs its folder (for example the "
            f"one holding bounding_box_train/, bounding_box_test/ and query/ for Market-1501 "
            f"and DukeMTMC-reID). Pass --config.data.root=/path/to/{dataset}")
    return get_dataset(dataset, root, **options)


def initial_variables(model, config: ml_collections.ConfigDict) -> dict:
    """Random init, or `config.model.pretrained`: a PyTorch .pth (torchvision ImageNet ResNet or
    a BoT checkpoint, converted on the fly) or a variables checkpoint directory."""
    variables = init_variables(model, jax.random.PRNGKey(config.seed),
                               tuple(config.data.image_size))
    source = config.model.pretrained
    if not source:
        return variables
    variables = jax.tree_util.tree_map(np.asarray, variables)
    if Path(source).is_dir():
        return checkpoint.load_variables(source, target=variables)
    return torch_weights.load_torch_weights(source, variables)


def eval_variables(model, config: ml_collections.ConfigDict, workdir: Path, num_classes: int,
                   variables_dir: str | None) -> dict:
    """Variables for eval / extract: `variables_dir` (--checkpoint), else the latest run
    checkpoint in `workdir`."""
    target = jax.tree_util.tree_map(np.asarray, init_variables(
        model, jax.random.PRNGKey(config.seed), tuple(config.data.image_size)))
    if variables_dir:
        return checkpoint.load_variables(variables_dir, target=target)
    runs = RunCheckpoints(workdir / "checkpoints", config.train.keep_checkpoints)
    if runs.latest_epoch() is None:
        raise FileNotFoundError(f"no run checkpoint in {runs.directory} and no --checkpoint")
    tx = optim.make_optimizer(config)
    state = create_train_state(target, init_centers(jax.random.PRNGKey(0), num_classes,
                                                    feature_dim(config.model.depth)), tx)
    state, meta = runs.restore(state)
    logging.info("evaluating the checkpoint after epoch %d", meta["epoch"])
    runs.close()
    return variables_of(state)


def inference_fn(model):
    """`(variables, images) -> features`; one object per model, so the forward compiles once
    for every split extracted with it."""
    return functools.partial(model.apply, train=False)


def extract(apply_fn, variables: dict, records, config: ml_collections.ConfigDict) -> dict:
    """Features of one split (see evaluate.extract_features), the batch sharded over devices."""
    from data_pipelines.pipeline import make_eval_iterator

    mesh = parallel.make_mesh()
    shard = jax.process_count() == 1 and config.data.eval_batch_size % mesh.devices.size == 0

    def batches():
        for batch in make_eval_iterator(records, config.data):
            if shard:
                batch = dict(batch, image=jax.device_put(batch["image"],
                                                         parallel.data_sharding(mesh)))
            yield batch

    return evaluate.extract_features(apply_fn, jax.device_get(variables), batches(),
                                     flip=config.eval.flip, feat_norm=config.eval.feat_norm)


def flat_summary(results: dict) -> dict[str, float]:
    """{"rank1", "mAP", ...} of the original ranking, "rerank_*" of the re-ranked one."""
    flat = {}
    for name, row in evaluate.summarize(results).items():
        prefix = "" if name == "original" else "rerank_"
        flat.update({f"{prefix}{k}": float(v) for k, v in row.items()
                     if not k.startswith("num_")})
    return flat


def evaluation_dataset(config: ml_collections.ConfigDict, workdir: Path):
    """The dataset whose query / gallery are evaluated: config.eval.dataset (cross-domain) or
    the training dataset."""
    if config.eval.dataset:
        return load_dataset(config.eval.dataset, config.eval.root, config, workdir)
    return load_dataset(config.data.dataset, config.data.root, config, workdir)


def run_evaluation(apply_fn, variables: dict, dataset, config: ml_collections.ConfigDict,
                   rerank: bool) -> dict:
    """Query and gallery features with `apply_fn` (see `inference_fn`), then the metrics."""
    query = extract(apply_fn, variables, dataset.query, config)
    gallery = extract(apply_fn, variables, dataset.gallery, config)
    eval_config = ml_collections.ConfigDict(config.eval.to_dict())
    eval_config.rerank = rerank
    return evaluate.evaluate_features(query, gallery, eval_config)


def write_results(workdir: Path, results: dict, name: str, extra: dict) -> None:
    """`workdir/<name>` (JSON: summary in percent + extra) and the report on stdout."""
    if jax.process_index() != 0:
        return
    report = evaluate.format_report(results)
    print(report, flush=True)
    payload = dict(extra, **evaluate.summarize(results))
    (workdir / name).write_text(json.dumps(payload, indent=2) + "\n")


def save_config(config: ml_collections.ConfigDict, workdir: Path) -> None:
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")


def train(config: ml_collections.ConfigDict, workdir: Path) -> None:
    """Trains (resuming when workdir holds checkpoints); the final evaluation, with and without
    re-ranking, goes to workdir/results.json."""
    from data_pipelines.pipeline import make_train_iterator

    train_set = load_dataset(config.data.dataset, config.data.root, config, workdir)
    eval_set = evaluation_dataset(config, workdir)
    model = create_model(config.model, train_set.num_train_ids)
    apply_fn = inference_fn(model)  # one object: the forward compiles once for the whole run

    def stream(sampler_state):
        return iter(make_train_iterator(train_set.train, config.data, config.seed,
                                        jax.process_index(), jax.process_count(),
                                        sampler_state))

    def evaluate_now(variables: dict, final: bool) -> dict:
        results = run_evaluation(apply_fn, variables, eval_set, config,
                                 rerank=final or config.eval.rerank)
        if final:
            write_results(workdir, results, "results.json",
                          {"epochs": config.train.epochs,
                           "dataset": config.eval.dataset or config.data.dataset})
        return flat_summary(results)

    train_and_evaluate(config, workdir, model, initial_variables(model, config), stream,
                       evaluate_now)


class _QuietLibraries(pylogging.Filter):
    """Keeps warnings and errors from orbax (which logs every step of every save at INFO)."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        return record.levelno >= pylogging.WARNING or "/orbax/" not in record.pathname


def define_flags() -> None:
    """Defines this command's absl flags. Called only when run as a program, so that importing
    the module (tests, notebooks, `reid_jax.convert` in the same process) defines none."""
    config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:arg]).",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, results.")
    flags.DEFINE_enum("mode", "train", ["train", "eval", "extract"], "What to run.")
    flags.DEFINE_string("checkpoint", None, "eval / extract: a variables checkpoint directory.")
    flags.DEFINE_string("output", None,
                        "extract: the .npz to write (default WORKDIR/features.npz).")
    flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0.")
    flags.DEFINE_integer("num_processes", None, "Multi-host: process count.")
    flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")
    flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    logging.get_absl_handler().addFilter(_QuietLibraries())
    flag = flags.FLAGS
    if flag.coordinator_address or flag.num_processes:
        jax.distributed.initialize(flag.coordinator_address, flag.num_processes, flag.process_id)
    run(flag.config, flag.workdir, flag.mode, flag.checkpoint, flag.output)


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike, mode: str = "train",
        variables_dir: str | None = None, output: str | None = None) -> None:
    """What `python -m reid_jax.main` does once its flags are parsed (see the module doc)."""
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    logging.info("JAX %s, %d devices (%s), %d processes", jax.__version__, jax.device_count(),
                 jax.devices()[0].platform, jax.process_count())
    if mode == "train":
        save_config(config, workdir)
        train(config, workdir)
        return
    eval_set = evaluation_dataset(config, workdir)
    num_classes = _num_train_ids(config, workdir, variables_dir)
    model = create_model(config.model, num_classes)
    variables = eval_variables(model, config, workdir, num_classes, variables_dir)
    if mode == "eval":
        results = run_evaluation(inference_fn(model), variables, eval_set, config,
                                 config.eval.rerank)
        write_results(workdir, results, "eval_results.json", {
            "checkpoint": variables_dir or str(workdir / "checkpoints"),
            "dataset": config.eval.dataset or config.data.dataset})
        return
    output = Path(output or workdir / "features.npz")
    arrays, apply_fn = {}, inference_fn(model)
    for split in ("query", "gallery"):
        feats = extract(apply_fn, variables, getattr(eval_set, split), config)
        arrays.update({f"{split}_{k}": np.asarray(v) for k, v in feats.items()})
    if jax.process_index() == 0:
        np.savez(output, **arrays)
        print(f"wrote {output}: {len(arrays['query_features'])} query and "
              f"{len(arrays['gallery_features'])} gallery features", flush=True)


def _num_train_ids(config: ml_collections.ConfigDict, workdir: Path,
                   variables_dir: str | None) -> int:
    """The classifier width of the checkpoint to evaluate: from a variables checkpoint's metadata
    when it records one, else the training dataset's id count."""
    if variables_dir:
        meta = checkpoint.load_metadata(variables_dir)
        if "num_classes" in meta:
            return int(meta["num_classes"])
    return load_dataset(config.data.dataset, config.data.root, config, workdir).num_train_ids


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    define_flags()
    app.run(main)
