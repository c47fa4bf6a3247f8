"""Everything between image files on disk and a PK batch: dataset readers (`datasets`), TFDS
builders (`tfds_builders`), the PK sampler (`sampler`), augmentation (`augment`), decoding
(`images`), tf.data streams (`pipeline`) and a synthetic dataset (`synthetic`).

Only this package imports TensorFlow; `datasets` and `sampler` need numpy alone.
"""
