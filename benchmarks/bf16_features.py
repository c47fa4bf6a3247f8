"""How far bfloat16 eval features are from float32 ones, on the shared real images.

  python benchmarks/bf16_features.py                   # BoT ResNet-50 256x128, random weights
  python benchmarks/bf16_features.py --checkpoint=DIR  # a trained model (variables checkpoint)
  python benchmarks/bf16_features.py --depth=18 --image_size=96,48 --checkpoint=DIR

Without a checkpoint the model has random weights whose BatchNorm statistics are set to those
of 64 real train images (as a trained model's would be: activations normalised), so the
comparison exercises realistic activation ranges. For ../shared/data/market1501-mini and the
cuhk03-labeled val split it prints the max / mean absolute difference of the unit feature
vectors (bfloat16 compute vs float32) and rank-1 / mAP of both.
"""

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATASETS = {"market1501-mini": ("market1501", "market1501-mini"),
            "cuhk03-labeled val": ("cuhk03_pairs", "cuhk03-labeled")}


def calibrated_variables(method, config, images: np.ndarray) -> dict:
    """Random init whose BN running statistics are those of one train-mode pass over `images`
    (BatchNorm's momentum update inverted: batch = (new - 0.9 old) / 0.1)."""
    params, batch_stats = method.init(jax.random.PRNGKey(config.seed))
    variables = method.model_variables(params, batch_stats)[0]
    _, updates = jax.jit(lambda v, x: method.model.apply(v, x, train=True,
                                                         mutable=["batch_stats"]))(
        variables, images)
    stats = jax.tree.map(lambda new, old: (new - 0.9 * old) / 0.1, updates["batch_stats"],
                         variables["batch_stats"])
    return {"params": variables["params"], "batch_stats": stats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="", help="variables checkpoint (optional)")
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--image_size", default="256,128", help="H,W pixels (the model's)")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from configs.market import get_config
    from data_pipelines.datasets import get_dataset
    from data_pipelines.pipeline import make_eval_iterator
    from reid_jax import checkpoint
    from reid_jax.eval import Evaluator, summarize
    from reid_jax.methods import get_method

    config = get_config()
    config.model.depth = args.depth
    config.data.image_size = tuple(int(v) for v in args.image_size.split(","))
    config.data.eval_batch_size = 64
    cuhk03 = get_dataset("cuhk03_pairs", Path(args.data) / "cuhk03-labeled")
    train = cuhk03.train
    method = get_method(config, cuhk03.num_train_ids)
    if args.checkpoint:
        variables = checkpoint.load_variables(args.checkpoint)
        source = args.checkpoint
    else:
        first = next(iter(make_eval_iterator(train.select(np.arange(len(train)) < 64),
                                             config.data)))
        variables = calibrated_variables(method, config, jnp.asarray(first["image"]))
        source = "random weights, BN statistics of 64 real train images"
    device = jax.devices()[0]
    print(f"BoT ResNet-{args.depth} {tuple(config.data.image_size)}, {source}; "
          f"{device.platform} {device.device_kind}, jax {jax.__version__}")
    print("| images | max abs diff | mean abs diff | float32 rank-1 / mAP | "
          "bfloat16 rank-1 / mAP |")
    print("|---|---:|---:|---:|---:|")
    for name, (dataset, folder) in DATASETS.items():
        data = get_dataset(dataset, Path(args.data) / folder)
        rows = {}
        for dtype in ("float32", "bfloat16"):
            config.model.dtype = dtype
            dtype_method = get_method(config, method.num_classes)
            evaluator = Evaluator(dtype_method.embed, make_eval_iterator(data.query, config.data),
                                  make_eval_iterator(data.gallery, config.data), config.eval)
            query, gallery = evaluator.features(variables)
            results = summarize(evaluator(variables, rerank=False))["original"]
            rows[dtype] = (np.concatenate([query["features"], gallery["features"]]), results)
        diff = np.abs(rows["bfloat16"][0] - rows["float32"][0])
        scores = [f"{rows[d][1]['rank1']:.1f} / {rows[d][1]['mAP']:.1f}"
                  for d in ("float32", "bfloat16")]
        print(f"| {name} ({len(diff)}) | {diff.max():.2e} | {diff.mean():.2e} | {scores[0]} | "
              f"{scores[1]} |", flush=True)


if __name__ == "__main__":
    main()
