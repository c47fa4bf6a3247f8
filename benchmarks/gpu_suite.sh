#!/usr/bin/env bash
# gpu_suite.sh: the one GPU benchmark suite of reid_jax (sections a-d of benchmarks/gpu_suite.py:
# train-step img/s vs PyTorch, MFU, evaluation at Market-1501 / MSMT17 scale, a short real
# CUHK03 recipe vs PyTorch), sized to finish in <= 8 min (budget 470 s) on one H100/H200.
#
# Usage, from anywhere (it runs in the repository root):
#   bash benchmarks/gpu_suite.sh                 # GPU sizes; the table goes to stdout and to
#                                                # $OUT/gpu_suite.md ($OUT set) or runs/gpu_suite.md
#   bash benchmarks/gpu_suite.sh --cpu           # the same code at CPU sizes (~2-3 min on 2 cores)
#   bash benchmarks/gpu_suite.sh --no-tf --cpu   # with `import tensorflow` made to fail
#   bash benchmarks/gpu_suite.sh --sections=c,d --budget_s=240   # a partial rerun
# Other options (--data DIR, --out FILE, --epochs N): python3 benchmarks/gpu_suite.py --help.
# Data: the cuhk03-labeled folder is looked up in --data, $REID_DATA, shared/data, runs/data
# (a copy carried to the device machine) and ../shared/data. ml_collections, when missing (the
# GPU image lacks it), is installed offline from wheels in .whl/ (pip --no-index; nothing is
# fetched from a registry). Python: $PYTHON, default python3.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
args=()
for arg in "$@"; do
  if [[ $arg == --no-tf ]]; then
    export PYTHONPATH="$PWD/benchmarks/no_tensorflow${PYTHONPATH:+:$PYTHONPATH}"
  else
    args+=("$arg")
  fi
done
if ! "$PY" -c 'import ml_collections' 2>/dev/null; then
  if compgen -G '.whl/*.whl' >/dev/null; then
    site=${TMPDIR:-/tmp}/reid_suite_site
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$site" .whl/*.whl || exit 1
    export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$site"
  else
    echo "gpu_suite.sh: ml_collections is missing and .whl/ holds no wheel" >&2
    exit 1
  fi
fi
export PYTHONPATH="$PWD:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" benchmarks/gpu_suite.py "${args[@]}"
