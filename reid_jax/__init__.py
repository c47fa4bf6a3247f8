"""reid_jax: person re-identification in JAX/Flax (BoT strong baseline, AlignedReID).

Nothing in this package imports TensorFlow; data loading lives in `data_pipelines`.
"""

__version__ = "0.1.0"
