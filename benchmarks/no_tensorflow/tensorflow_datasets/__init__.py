"""A stand-in that makes `import tensorflow_datasets` fail (see ../tensorflow/__init__.py)."""

raise ImportError("tensorflow_datasets is blocked by benchmarks/no_tensorflow (--no-tf)")
