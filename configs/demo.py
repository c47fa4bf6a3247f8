"""CPU-friendly demo: BoT on a synthetic Market-1501-layout dataset, generated on first use.

  python -m reid_jax.main --config=configs/demo.py --workdir=runs/demo

The synthetic dataset (identities fixed by colours / shapes / textures, cameras varying light,
blur, noise and framing) is written into WORKDIR/synthetic unless --config.data.root points
elsewhere. ResNet-18 at 96x48 from scratch; finishes in a few minutes on a 2-core CPU.
(96x48 rather than 64x32: with last stride 1 the last stages' maps are then 6x3; XLA:CPU's 3x3
convolution is ~100x slower on maps of at most 8 pixels, such as the 4x2 maps of 64x32; see
BENCHMARKS.md, "Which op is slow on small maps".)
"""

import ml_collections

from configs.market import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config("synthetic")
    config.model.depth = 18
    config.data.image_size = (96, 48)
    config.data.pad = 4
    config.data.ids_per_batch = 8
    config.data.instances_per_id = 4
    config.data.eval_batch_size = 128
    config.data.synthetic = ml_collections.ConfigDict({
        "num_train_ids": 64, "num_test_ids": 50, "num_cameras": 4,
        "images_per_id_per_camera": 3, "image_size": (96, 48), "seed": 0})
    config.optim.base_lr = 1e-3
    config.optim.warmup_epochs = 2
    config.optim.milestones = (14, 18)
    config.train.epochs = 20
    config.train.log_every_steps = 5
    config.train.eval_every_epochs = 10
    config.train.checkpoint_every_epochs = 5
    return config
