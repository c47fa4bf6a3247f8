"""reid_jax: person re-identification in JAX/Flax (BoT strong baseline, AlignedReID).

Nothing in this package imports TensorFlow; data loading lives in `data_pipelines`.
`reid_jax.FeatureExtractor` (features of image files / arrays from a trained model) is imported
on first use, so `import reid_jax` stays light.
"""

__version__ = "0.1.0"
__all__ = ["FeatureExtractor", "__version__"]


def __getattr__(name: str):
    if name == "FeatureExtractor":
        from reid_jax.eval.extractor import FeatureExtractor

        return FeatureExtractor
    raise AttributeError(f"module 'reid_jax' has no attribute {name!r}")
