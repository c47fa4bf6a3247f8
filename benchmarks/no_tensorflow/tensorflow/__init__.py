"""A stand-in that makes `import tensorflow` fail (benchmarks/gpu_suite.sh --no-tf puts this
folder first on PYTHONPATH): proof that the suite runs where TensorFlow is absent."""

raise ImportError("tensorflow is blocked by benchmarks/no_tensorflow (gpu_suite.sh --no-tf)")
