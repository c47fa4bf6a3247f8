"""Converts a PyTorch `.pth` (a whole model of the config's method, e.g. a BoT or AlignedReID
re-production checkpoint, or a torchvision ImageNet ResNet) to an orbax variables checkpoint
for the model described by a config.

  python -m reid_jax.convert SRC.pth DST_DIR --config=configs/market.py \
      [--config.model.depth=18] [--num_classes=751] [--overwrite]
  python -m reid_jax.convert aligned.pth DST_DIR --config=configs/aligned.py

num_classes comes from the checkpoint's classifier (`classifier.weight` for BoT, `fc.weight` for
AlignedReID) when it has one, else from --num_classes (which, when given, always wins). Torch
is not needed.
"""

import os
import sys
from pathlib import Path

import jax
import ml_collections
import numpy as np
from absl import flags, logging
from ml_collections import config_flags

from reid_jax import checkpoint, main, torch_weights
from reid_jax.methods import METHODS, get_method
from reid_jax.validate import check_config


def convert(src: str | os.PathLike, dst: str | os.PathLike, config: ml_collections.ConfigDict,
            num_classes: int | None = None, overwrite: bool = False) -> dict:
    """Reads `src`, maps it onto the first model of `config.method`'s variables, writes `dst`.

    Returns the summary also stored as the checkpoint's metadata: source, layout, method,
    num_classes, tensors read, parameter count, the model config.
    """
    check_config(config)
    checkpoint.check_destination(dst, overwrite)
    state = torch_weights.load_pth(src)
    layout = torch_weights.detect_layout(state)
    if num_classes is None:
        if layout != "bot":
            raise ValueError(f"{src} holds a backbone only (torchvision layout); pass "
                             "--num_classes")
        num_classes = METHODS[config.method].num_classes_in_torch(state)
    method = get_method(config, num_classes)

    def init() -> dict:
        params, batch_stats = method.init(jax.random.PRNGKey(config.seed))
        return method.model_variables(params, batch_stats)[0]

    # A whole-model checkpoint replaces every variable: shapes suffice, no need to run the init.
    target = jax.eval_shape(init) if layout == "bot" else jax.tree.map(np.asarray, init())
    variables = torch_weights.torch_to_flax(state, target, source=str(src))
    summary = {
        "source": str(Path(src).resolve()),
        "layout": layout,
        "method": config.method,
        "num_classes": num_classes,
        "tensors_read": len(state),
        "parameters": int(sum(np.size(x) for x in jax.tree.leaves(variables["params"]))),
        "model": config.model.to_dict(),
    }
    checkpoint.save_variables(dst, variables, summary, overwrite=overwrite)
    return summary


def define_flags(flag_values: flags.FlagValues, argv: list[str]) -> None:
    """This command's flags, in `flag_values` (see reid_jax.main.define_flags)."""
    config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                    flag_values=flag_values, lock_config=True, sys_argv=argv)
    flags.DEFINE_integer("num_classes", None, "Classifier width; default: the checkpoint's "
                         "classifier rows.", flag_values=flag_values)
    flags.DEFINE_bool("overwrite", False, "Replace DST_DIR if it exists.",
                      flag_values=flag_values)
    flags.DEFINE_bool("debug", False, "Show tracebacks of mistakes.", flag_values=flag_values)


def cli(argv: list[str]) -> int:
    """`python -m reid_jax.convert SRC.pth DST_DIR --config=...`; returns the exit status."""
    flag_values = main.parse_command_line(argv, define_flags, ("config",), positional=2)
    if isinstance(flag_values, int):
        return flag_values
    paths = [arg for arg in argv[1:] if not arg.startswith("-")]
    logging.set_verbosity(logging.WARNING)  # orbax logs every step of a save at INFO

    def command() -> None:
        summary = convert(paths[0], paths[1], flag_values.config, flag_values.num_classes,
                          flag_values.overwrite)
        model = summary["model"]
        print(f"converted {summary['source']} ({summary['layout']} layout, "
              f"{summary['tensors_read']} tensors)\n"
              f"  model: {summary['method']} {model.get('backbone', 'resnet')}-{model['depth']} "
              f"last_stride={model['last_stride']} stem_relu={model['stem_relu']}, "
              f"{summary['num_classes']} classes, {summary['parameters']:,} parameters\n"
              f"  wrote {Path(paths[1]).resolve()}")

    return main.report_mistakes(command, argv)


if __name__ == "__main__":
    sys.exit(cli(sys.argv))
