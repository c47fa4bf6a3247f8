"""Converts a PyTorch `.pth` (BoT checkpoint or torchvision ImageNet ResNet) to an orbax
variables checkpoint for the model described by a config.

  python -m reid_jax.convert SRC.pth DST_DIR --config=configs/market.py \
      [--config.model.depth=18] [--num_classes=751] [--overwrite]

num_classes comes from the checkpoint's `classifier.weight` when it has one, else from
--num_classes (which, when given, always wins). Torch is not needed.
"""

import functools
import os
from pathlib import Path

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from reid_jax import checkpoint, torch_weights
from reid_jax.models import create_model, init_variables


def convert(src: str | os.PathLike, dst: str | os.PathLike, config: ml_collections.ConfigDict,
            num_classes: int | None = None, overwrite: bool = False) -> dict:
    """Reads `src`, maps it onto `create_model(config.model, ...)`'s variables, writes `dst`.

    Returns the summary also stored as the checkpoint's metadata: source, layout, num_classes,
    tensors read, parameter count, the model config.
    """
    state = torch_weights.load_pth(src)
    if num_classes is None:
        if "classifier.weight" not in state:
            raise ValueError(f"{src} has no classifier.weight; pass --num_classes")
        num_classes = int(state["classifier.weight"].shape[0])
    model = create_model(config.model, num_classes)
    layout = torch_weights.detect_layout(state)
    init = functools.partial(init_variables, model, jax.random.key(config.seed),
                             tuple(config.data.image_size))
    # A BoT checkpoint replaces every variable: shapes suffice, no need to run the init.
    target = jax.eval_shape(init) if layout == "bot" else init()
    variables = torch_weights.torch_to_flax(state, target, source=str(src))
    summary = {
        "source": str(Path(src).resolve()),
        "layout": layout,
        "num_classes": num_classes,
        "tensors_read": len(state),
        "parameters": int(sum(np.size(x) for x in jax.tree.leaves(variables["params"]))),
        "model": config.model.to_dict(),
    }
    checkpoint.save_variables(dst, variables, summary, overwrite=overwrite)
    return summary


def define_flags() -> None:
    """Defines this command's absl flags; only when run as a program (see reid_jax.main)."""
    config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                    lock_config=True)
    flags.DEFINE_integer("num_classes", None,
                         "Classifier width; default: rows of the checkpoint's classifier.weight.")
    flags.DEFINE_bool("overwrite", False, "Replace DST_DIR if it exists.")


def main(argv: list[str]) -> None:
    if len(argv) != 3:
        raise app.UsageError("usage: python -m reid_jax.convert SRC.pth DST_DIR --config=...")
    flag = flags.FLAGS
    if flag.config is None:
        raise app.UsageError("--config is required (e.g. --config=configs/market.py)")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every step of a save at INFO
    summary = convert(argv[1], argv[2], flag.config, flag.num_classes, flag.overwrite)
    model = summary["model"]
    print(f"converted {summary['source']} ({summary['layout']} layout, "
          f"{summary['tensors_read']} tensors)\n"
          f"  model: ResNet-{model['depth']} last_stride={model['last_stride']} "
          f"stem_relu={model['stem_relu']} neck={model['neck']}, "
          f"{summary['num_classes']} classes, {summary['parameters']:,} parameters\n"
          f"  wrote {Path(argv[2]).resolve()}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
