"""reid_jax command line: train, evaluate, extract features or export a model from a config.

  python -m reid_jax.main --config=configs/demo.py --workdir=runs/demo
  python -m reid_jax.main --config=configs/market.py --workdir=runs/market \\
      --config.data.root=/data/Market-1501-v15.09.15
  python -m reid_jax.main --config=configs/market.py --workdir=runs/market --mode=eval \\
      --config.eval.rerank=True [--checkpoint=best|latest|DIR|FILE.pth] \\
      [--config.eval.dataset=dukemtmcreid --config.eval.root=/data/DukeMTMC-reID]
  python -m reid_jax.main ... --mode=extract --output=features.npz
  python -m reid_jax.main ... --mode=export [--output=DIR]   # the best model's variables
  python -m reid_jax.main ... --mode=visualize [--checkpoint=features.npz] [--output=DIR]

`--checkpoint` (eval / extract / export) is "latest" (default for eval / extract) or "best"
(default for export: best by mAP) of the workdir's run checkpoints, a variables checkpoint
(`python -m reid_jax.convert`, --mode=export), another run's workdir, or a PyTorch .pth.
Multi-host: pass --coordinator_address, --num_processes and --process_id on every host (or
nothing where the cluster sets them up for jax.distributed.initialize()).

A mistake (a config key or value, a missing folder, a bad file or checkpoint) prints one line
naming it and exits with status 2; --debug (or REID_JAX_DEBUG=1) shows the traceback instead.
"""

import difflib
import importlib.util
import logging as pylogging
import os
import re
import sys
import traceback
from collections.abc import Callable

from absl import flags, logging
from ml_collections import config_flags

USER_ERRORS = (ValueError, OSError, KeyError)  # ConfigError, FileNotFoundError, ... included
MODES = ("train", "eval", "extract", "export", "visualize")


class _QuietLibraries(pylogging.Filter):
    """Keeps only orbax's warnings: it logs every step of every save at INFO, and the failure of
    a background save as pages of tracebacks (its own, and asyncio's for each of its write
    tasks), which the run reports in one line instead (RunCheckpoints.check)."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        if record.name == "asyncio":  # "Task exception was never retrieved" of orbax's writes
            error = record.exc_info[1] if record.exc_info else None
            frames = traceback.extract_tb(error.__traceback__) if error else []
            return not ("/orbax/" in record.getMessage()
                        or any("/orbax/" in frame.filename for frame in frames))
        return "/orbax/" not in record.pathname or record.levelno == pylogging.WARNING


def _is_closed_loop_callback(error: BaseException) -> bool:
    """A RuntimeError("Event loop is closed") raised where a write that orbax started finishes
    after orbax closed its event loop on a failed save (reported once by the run instead)."""
    frames = traceback.extract_tb(error.__traceback__)
    return (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"
            and any(frame.name == "call_soon_threadsafe" for frame in frames))


def _quiet_library_noise() -> None:
    """Routes orbax's and asyncio's logs through `_QuietLibraries`, and drops the closed-loop
    callbacks of a failed background save, which tensorstore reports as unraisable."""
    for name in ("absl", "asyncio"):
        pylogging.getLogger(name).addFilter(_QuietLibraries())
    default_hook = sys.unraisablehook

    def unraisablehook(unraisable) -> None:
        if not _is_closed_loop_callback(unraisable.exc_value):
            default_hook(unraisable)

    sys.unraisablehook = unraisablehook


def define_flags(flag_values: flags.FlagValues, argv: list[str]) -> None:
    """This command's flags, in `flag_values` (not absl's global FLAGS: importing this module
    or calling `cli` twice defines nothing globally)."""
    config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:arg]).",
                                    flag_values=flag_values, lock_config=True, sys_argv=argv)
    flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, results.",
                        flag_values=flag_values)
    flags.DEFINE_enum("mode", "train", list(MODES), "What to run.", flag_values=flag_values)
    flags.DEFINE_string("checkpoint", None, "eval / extract / export: latest | best | a "
                        "variables checkpoint | a run workdir | a .pth.",
                        flag_values=flag_values)
    flags.DEFINE_string("output", None, "extract: the .npz (default WORKDIR/features.npz); "
                        "export: the folder (default WORKDIR/best_model); visualize: the "
                        "folder (default WORKDIR/visualize).",
                        flag_values=flag_values)
    flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0.",
                        flag_values=flag_values)
    flags.DEFINE_integer("num_processes", None, "Multi-host: process count.",
                         flag_values=flag_values)
    flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.",
                         flag_values=flag_values)
    flags.DEFINE_bool("debug", False, "Show tracebacks of mistakes.", flag_values=flag_values)


def flag_error(error: Exception, argv: list[str]) -> str:
    """One line for a command-line parsing error: a config file that does not load, an unknown
    config key (with the nearest ones), an unknown flag or a bad value."""
    config_arg = next((arg for arg in argv if arg.startswith("--config=")), None)
    if config_arg:
        try:
            keys = _config_keys(load_config_file(config_arg.removeprefix("--config=")))
        except Exception as load_error:
            return f"cannot load {config_arg}: {_last_error_line(str(load_error))}"
        for arg in argv:
            key = re.match(r"--(config\.[^=]+)=", arg)
            if key and key.group(1) not in keys:
                near = difflib.get_close_matches(key.group(1), keys, n=1, cutoff=0.6)
                hint = f"; did you mean --{near[0]}?" if near else ""
                return f"--{key.group(1)} is not a key of the config{hint}"
    unknown = re.search(r"Unknown command line flag '([^']+)'", str(error))
    if unknown:
        return f"unknown flag --{unknown.group(1)} (see --help)"
    return _last_error_line(str(error))


def load_config_file(spec: str):
    """`get_config(arg)` of the config file `path[:arg]`, as --config loads it (no overrides)."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("reid_jax_config", path)
    if module_spec is None:
        raise FileNotFoundError(f"[Errno 2] No such file: {path!r}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(*([arg] if arg else []))


def _last_error_line(text: str) -> str:
    """The line of a (possibly traceback-laden) message that says what went wrong."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return "invalid command line"
    cause = [line for line in lines if re.match(r"^(\w+\.)*\w+(Error|Exception): ", line)
             or line.startswith("[Errno")]
    return cause[-1] if cause else lines[0]


def _config_keys(config, prefix: str = "config.") -> list[str]:
    keys = []
    for key, value in config.items():
        if hasattr(value, "items"):
            keys += _config_keys(value, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


def parse_command_line(argv: list[str], define: Callable[[flags.FlagValues, list[str]], None],
                       required: tuple[str, ...], positional: int = 0
                       ) -> flags.FlagValues | int:
    """The parsed flags of `argv` (config file and overrides loaded; `positional` arguments
    expected besides them), or the exit status after one `error:` line for a mistake."""
    flag_values = flags.FlagValues()
    define(flag_values, argv)
    try:
        extra = flag_values(argv)[1:]
        if len(extra) != positional:
            return fail(f"expected {positional} arguments besides the flags, got {extra}")
        for name in required:
            if flag_values[name].value is None:
                return fail(f"--{name} is required")
        flag_values.config.keys()  # the config file and its overrides, loaded lazily
    except (flags.Error, OSError, AttributeError, ValueError, TypeError) as error:
        if _debug(argv):
            raise
        return fail(flag_error(error, argv))
    flags.FLAGS.mark_as_parsed()  # absl logging reads its verbosity from the global flags
    _quiet_library_noise()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return flag_values


def report_mistakes(command: Callable[[], None], argv: list[str]) -> int:
    """Runs `command`; a user mistake becomes one `error:` line and status 2 (the traceback with
    --debug or REID_JAX_DEBUG=1)."""
    from reid_jax.checkpoint import CheckpointWriteError

    try:
        command()
    except (*USER_ERRORS, CheckpointWriteError) as error:
        if _debug(argv):
            raise
        message = str(error) if not isinstance(error, KeyError) else f"missing key {error}"
        return fail(f"{message} (--debug shows the traceback)")
    return 0


def _debug(argv: list[str]) -> bool:
    return os.environ.get("REID_JAX_DEBUG", "") not in ("", "0") or "--debug" in argv


def cli(argv: list[str]) -> int:
    """Runs the command line `argv` (argv[0] the program); returns the exit status."""
    flag_values = parse_command_line(argv, define_flags, ("config", "workdir"))
    if isinstance(flag_values, int):
        return flag_values
    logging.set_verbosity(logging.INFO)

    def command() -> None:
        import jax

        from reid_jax import run

        if flag_values.coordinator_address or flag_values.num_processes:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU hosts
            jax.distributed.initialize(flag_values.coordinator_address,
                                       flag_values.num_processes, flag_values.process_id)
        mode, config, workdir = flag_values.mode, flag_values.config, flag_values.workdir
        if mode == "train":
            run.train(config, workdir)
        elif mode == "eval":
            run.evaluate(config, workdir, flag_values.checkpoint)
        else:
            run.MODES[mode](config, workdir, flag_values.checkpoint, flag_values.output)

    return report_mistakes(command, argv)


def fail(message: str) -> int:
    """Writes `error: message` to stderr; returns the exit status of a mistake (2)."""
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    return 2


if __name__ == "__main__":
    sys.exit(cli(sys.argv))
