"""Exports a trained model's evaluation features for serving without this code: an ONNX model,
or a serialized `jax.export` (StableHLO) module.

  python -m reid_jax.export --checkpoint=DIR --config=configs/market.py --format=onnx \
      --output=bot.onnx [--input=uint8_nhwc|float32_nchw] [--normalize_in_graph=true|false]
  python -m reid_jax.export --checkpoint=DIR --config=configs/market.py --format=stablehlo \
      --output=bot.stablehlo [--platforms=cpu,cuda]

`--checkpoint` is what `reid_jax.main --checkpoint` takes: a variables checkpoint folder, a run
workdir (its `--select=latest|best` checkpoint) or a PyTorch `.pth`. The exported function is
`FeatureExtractor.features_fn` (flip averaging and L2 normalisation per `config.eval`), the
variables as constants, with a dynamic batch dimension:

- input `images`: `uint8_nhwc` [N, H, W, 3] RGB pixels at the model's `config.data.image_size`
  (the normalisation `(x / 255 - mean) / std` with `config.data.mean` / `std` then has to be in
  the graph), or `float32_nchw` [N, 3, H, W]: already normalised by default (what torchvision's
  `ToTensor` + `Normalize` give), or pixel values 0..255 with `--normalize_in_graph=true`.
- outputs: `features` float32 [N, D]; for AlignedReID also `local_features` float32 [N, S, d].

The ONNX model is opset 23 and computes in float32 (for a `config.model.dtype=bfloat16` model,
pass `--config.model.dtype=float32`: its parameters are float32).

Reloading: `onnxruntime.InferenceSession("bot.onnx").run(None, {"images": x})` gives the
outputs in that order; `jax.export.deserialize(open("bot.stablehlo", "rb").read()).call(x)`
gives the dict {"features": ..., ...}, on the platforms it was exported for (by default CPU and
CUDA). Resize images to (H, W) as the evaluation does: PIL bilinear from uint8.

Converter: jax2onnx (`pip install -e '.[export]'`), fed the model's jaxpr. It converts lax
primitives one by one (convolutions, BatchNorm's arithmetic, reductions, `reduce_window` max
pooling), so the ONNX graph is the computation that XLA compiles, and it keeps a symbolic batch
dimension. The jaxpr is traced here, before jax2onnx sees it: jax2onnx's own tracing would
replace `flax.linen.max_pool` by its version, which takes the window by keyword only and lowers
explicit padding pairs (the ResNet stem's) as VALID. Its one lowering that onnxruntime cannot
run, a max pool over all four axes of an NHWC tensor (a 4-D `MaxPool`), is rewritten here into
the usual 2-D `MaxPool` between two transposes. The alternatives: jax2tf + tf2onnx needs
TensorFlow, and jax2tf now emits one `XlaCallModule` op (its op-by-op mode is gone), which
tf2onnx cannot convert; a converter of our own from the jaxpr would be code to maintain for
what jax2onnx does. StableHLO needs nothing beyond JAX.
"""

import contextlib
import importlib.util
import logging as pylogging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags, logging
from jax.extend.core import jaxpr_as_fun
from ml_collections import config_flags

from data_pipelines.augment import normalize
from reid_jax import main
from reid_jax.eval.extractor import FeatureExtractor
from reid_jax.eval.features import FEATURE_KEYS

FORMATS = ("onnx", "stablehlo")
INPUTS = ("uint8_nhwc", "float32_nchw")
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
INPUT_NAME = "images"
BATCH = "b"  # the symbolic batch dimension (ONNX dim_param)
ONNX_MODULES = ("jax2onnx", "onnx")
CONVERTER_LOGGERS = ("jax2onnx", "onnx_ir")  # plugin import warnings, serialisation notes


def serving_fn(extractor: FeatureExtractor, input_layout: str,
               normalize_in_graph: bool) -> Callable[[jax.Array], dict[str, jax.Array]]:
    """`input_layout` images -> {"features": [N, D], ...} float32: `extractor.features_fn`
    after the transpose to NHWC (float32_nchw) and the normalisation (if `normalize_in_graph`)."""
    check_input(input_layout, normalize_in_graph)

    def fn(images: jax.Array) -> dict[str, jax.Array]:
        if input_layout == "float32_nchw":
            images = jnp.transpose(images, (0, 2, 3, 1))
        if normalize_in_graph:
            images = normalize(images, extractor.augment_config, jnp)
        return extractor.features_fn(images)

    return fn


def check_input(input_layout: str, normalize_in_graph: bool) -> None:
    if input_layout not in INPUTS:
        raise ValueError(f"--input={input_layout}: expected one of {', '.join(INPUTS)}")
    if input_layout == "uint8_nhwc" and not normalize_in_graph:
        raise ValueError("--input=uint8_nhwc takes raw pixels, so the normalisation must be in "
                         "the graph: drop --normalize_in_graph=false, or use "
                         "--input=float32_nchw for normalised inputs")


def input_spec(image_size: tuple[int, int], input_layout: str) -> jax.ShapeDtypeStruct:
    """The exported input: the batch symbolic ("b"), the rest the model's image size."""
    height, width = image_size
    (batch,) = jax.export.symbolic_shape(BATCH)
    if input_layout == "uint8_nhwc":
        return jax.ShapeDtypeStruct((batch, height, width, 3), jnp.uint8)
    return jax.ShapeDtypeStruct((batch, 3, height, width), jnp.float32)


def export_stablehlo(fn: Callable, spec: jax.ShapeDtypeStruct,
                     platforms: tuple[str, ...] = ("cpu", "cuda")) -> bytes:
    """`jax.export` of `fn` at `spec` (shape-polymorphic batch) for `platforms`, serialized;
    `jax.export.deserialize(bytes).call(x)` runs it."""
    return bytes(jax.export.export(jax.jit(fn), platforms=platforms)(spec).serialize())


def export_onnx(fn: Callable, spec: jax.ShapeDtypeStruct, model_name: str = "reid_jax",
                metadata: dict[str, str] | None = None):
    """`fn` ({"features", maybe "local_features"}) as an `onnx.ModelProto`: input "images"
    (`spec`, dynamic batch "b"), the outputs in FEATURE_KEYS order, named by their keys."""
    with _quiet(CONVERTER_LOGGERS):
        from jax2onnx import to_onnx

        names = [key for key in FEATURE_KEYS if key in jax.eval_shape(fn, spec)]
        # Traced here to lax primitives, not by jax2onnx (see the module docstring).
        closed = jax.make_jaxpr(lambda images: tuple(fn(images)[key] for key in names))(spec)
        model = to_onnx(jaxpr_as_fun(closed), [spec], model_name=model_name,
                        input_names=[INPUT_NAME], output_names=names)
    _max_pools_as_2d(model)
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    return model


def _max_pools_as_2d(model) -> None:
    """Rewrites jax2onnx's lowering of an NHWC max pool, `MaxPool` over the 4 axes of
    [1, 1, N, H, W, C] (onnxruntime's CPU MaxPool takes 1 to 3 spatial axes), as Squeeze ->
    Transpose to NCHW -> 2-D MaxPool -> Transpose back -> Unsqueeze: the same values."""
    from onnx import helper, numpy_helper

    axes, nodes, changed = "reid_jax_unit_axes", [], False
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        kernel = list(attrs.get("kernel_shape", ()))
        if node.op_type != "MaxPool" or len(kernel) != 4:
            nodes.append(node)
            continue
        strides = list(attrs.get("strides", [1] * 4))
        pads = list(attrs.get("pads", [0] * 8))
        dilations = list(attrs.get("dilations", [1] * 4))
        outer = (kernel[0], kernel[3], strides[0], strides[3], dilations[0], dilations[3])
        if (outer != (1,) * 6 or any(pads[i] for i in (0, 3, 4, 7)) or len(node.output) != 1
                or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")):
            raise ValueError(f"cannot convert the ONNX node {node.name} (MaxPool {attrs}): "
                             "expected a max pool over H and W of an NHWC tensor")
        name = node.name or node.output[0]
        x, y = f"{name}_nhwc", f"{name}_nchw"
        nodes += [
            helper.make_node("Squeeze", [node.input[0], axes], [x], name=f"{name}_squeeze"),
            helper.make_node("Transpose", [x], [f"{x}_t"], name=f"{name}_to_nchw",
                             perm=[0, 3, 1, 2]),
            helper.make_node("MaxPool", [f"{x}_t"], [y], name=f"{name}_2d",
                             kernel_shape=kernel[1:3], strides=strides[1:3],
                             pads=[pads[1], pads[2], pads[5], pads[6]],
                             dilations=dilations[1:3], ceil_mode=attrs.get("ceil_mode", 0)),
            helper.make_node("Transpose", [y], [f"{y}_t"], name=f"{name}_to_nhwc",
                             perm=[0, 2, 3, 1]),
            helper.make_node("Unsqueeze", [f"{y}_t", axes], [node.output[0]],
                             name=f"{name}_unsqueeze"),
        ]
        changed = True
    if changed:
        model.graph.initializer.append(numpy_helper.from_array(np.asarray([0, 1], np.int64),
                                                               axes))
        del model.graph.node[:]
        model.graph.node.extend(nodes)


@contextlib.contextmanager
def _quiet(names: tuple[str, ...]) -> Iterator[None]:
    """Python loggers `names` at ERROR for the block (jax2onnx logs every plugin it cannot
    import with this JAX, with its traceback)."""
    loggers = [pylogging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(pylogging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def export(checkpoint: str | os.PathLike, config: ml_collections.ConfigDict, format: str,
           output: str | os.PathLike, input_layout: str = "uint8_nhwc",
           normalize_in_graph: bool | None = None, select: str = "latest",
           platforms: tuple[str, ...] = ("cpu", "cuda")) -> dict:
    """Writes the model `checkpoint` (see `FeatureExtractor`) as `format` to `output`.

    `normalize_in_graph` defaults to True for uint8_nhwc (where it must be) and False for
    float32_nchw. `platforms` are the StableHLO module's. Mistakes (a format, a missing folder,
    the converter not installed) raise ValueError / OSError before the model is loaded.
    Returns a summary: path, format, input, input_shape, normalize_in_graph, outputs (name ->
    shape, "N" the batch), origin, platforms (StableHLO)."""
    if format not in FORMATS:
        raise ValueError(f"--format={format}: expected one of {', '.join(FORMATS)}")
    if normalize_in_graph is None:
        normalize_in_graph = input_layout == "uint8_nhwc"
    check_input(input_layout, normalize_in_graph)
    output = Path(output).resolve()
    if output.is_dir():
        raise IsADirectoryError(f"--output={output} is a folder; expected a file path")
    if not output.parent.is_dir():
        raise FileNotFoundError(f"--output={output}: folder {output.parent} does not exist")
    if format == "onnx":
        if config.model.dtype != "float32":  # jax2onnx: float32 max pooling only
            raise ValueError(f"--format=onnx converts float32 models; config.model.dtype="
                             f"{config.model.dtype}: pass --config.model.dtype=float32 (the "
                             "parameters are float32 already)")
        missing = [name for name in ONNX_MODULES if importlib.util.find_spec(name) is None]
        if missing:
            raise ValueError(f"--format=onnx needs {' and '.join(missing)}, not installed: "
                             "pip install -e '.[export]'")
    else:
        unknown = sorted(set(platforms) - set(PLATFORMS))
        if not platforms or unknown:
            raise ValueError(f"--platforms={','.join(platforms)}: expected some of "
                             f"{', '.join(PLATFORMS)}")

    extractor = FeatureExtractor(checkpoint, config, select=select)
    fn = serving_fn(extractor, input_layout, normalize_in_graph)
    spec = input_spec(extractor.image_size, input_layout)
    shapes = jax.eval_shape(fn, jax.ShapeDtypeStruct((1, *spec.shape[1:]), spec.dtype))
    summary = {
        "path": str(output), "format": format, "input": input_layout,
        "input_shape": ["N", *spec.shape[1:]], "normalize_in_graph": normalize_in_graph,
        "outputs": {key: ["N", *shapes[key].shape[1:]] for key in FEATURE_KEYS if key in shapes},
        "origin": extractor.origin,
    }
    if format == "stablehlo":
        data = export_stablehlo(fn, spec, tuple(platforms))
        summary["platforms"] = list(platforms)
    else:
        metadata = {"method": config.method, "checkpoint": extractor.origin,
                    "input": input_layout, "normalize_in_graph": normalize_in_graph,
                    "image_size": list(extractor.image_size),
                    "mean": list(extractor.augment_config.mean),
                    "std": list(extractor.augment_config.std),
                    "flip": bool(config.eval.flip), "feat_norm": bool(config.eval.feat_norm)}
        data = export_onnx(fn, spec, f"reid_jax_{config.method}", metadata).SerializeToString()
    partial = output.with_name(f"{output.name}.tmp-{os.getpid()}")
    try:
        partial.write_bytes(data)
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    return summary


def define_flags(flag_values: flags.FlagValues, argv: list[str]) -> None:
    """This command's flags, in `flag_values` (see reid_jax.main.define_flags)."""
    config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:arg]).",
                                    flag_values=flag_values, lock_config=True, sys_argv=argv)
    flags.DEFINE_string("checkpoint", None, "A variables checkpoint, a run workdir or a .pth.",
                        flag_values=flag_values)
    flags.DEFINE_enum("select", "latest", ["latest", "best"], "For a run workdir: its latest "
                      "checkpoint or the best by mAP.", flag_values=flag_values)
    flags.DEFINE_enum("format", None, list(FORMATS), "What to write.", flag_values=flag_values)
    flags.DEFINE_string("output", None, "The file to write.", flag_values=flag_values)
    flags.DEFINE_enum("input", "uint8_nhwc", list(INPUTS), "The model input: uint8 pixels "
                      "[N, H, W, 3] or float32 [N, 3, H, W].", flag_values=flag_values)
    flags.DEFINE_bool("normalize_in_graph", None, "(x / 255 - mean) / std inside the model; "
                      "default: true for uint8_nhwc (required), false for float32_nchw.",
                      flag_values=flag_values)
    flags.DEFINE_list("platforms", ["cpu", "cuda"], "stablehlo: the platforms to lower for.",
                      flag_values=flag_values)
    flags.DEFINE_bool("debug", False, "Show tracebacks of mistakes.", flag_values=flag_values)


def cli(argv: list[str]) -> int:
    """`python -m reid_jax.export --checkpoint=... --config=... --format=... --output=...`;
    returns the exit status."""
    flag_values = main.parse_command_line(argv, define_flags,
                                          ("config", "checkpoint", "format", "output"))
    if isinstance(flag_values, int):
        return flag_values
    logging.set_verbosity(logging.WARNING)

    def command() -> None:
        summary = export(flag_values.checkpoint, flag_values.config, flag_values.format,
                         flag_values.output, flag_values.input, flag_values.normalize_in_graph,
                         flag_values.select, tuple(flag_values.platforms))
        shape = ", ".join(str(size) for size in summary["input_shape"])
        outputs = ", ".join(f"{key} [{', '.join(str(size) for size in value)}]"
                            for key, value in summary["outputs"].items())
        where = (f", for {','.join(summary['platforms'])}" if "platforms" in summary else "")
        norm = "in the graph" if summary["normalize_in_graph"] else "outside"
        print(f"wrote {summary['path']} ({summary['format']}, input {summary['input']} "
              f"[{shape}], normalisation {norm}, dynamic batch{where})\n"
              f"  outputs: {outputs}; model from {summary['origin']}")

    return main.report_mistakes(command, argv)


if __name__ == "__main__":
    sys.exit(cli(sys.argv))
