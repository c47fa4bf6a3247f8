"""AlignedReID (global + local stripes, shortest-path alignment, mutual learning) as the
re-production runs it (REFERENCE section 8): ResNet-50 (stem ReLU, last stride 2), P 32 x K 4,
flip only, Adam 2e-4 with coupled L2 5e-4 and the exponential decay from epoch 151 of 300.

  python -m reid_jax.main --config=configs/aligned.py:global --workdir=runs/aligned \\
      --config.data.root=/data/Market-1501-v15.09.15
  python -m reid_jax.main --config=configs/aligned.py:mutual ...        # 2 models
  python -m reid_jax.main --config=configs/aligned.py:global_local ...  # + local loss

The argument picks a published row (Market-1501, rank-1 / mAP, normalize_feature False):
  global        global triplet loss only                                   87.05 / 71.38
  mutual        + mutual learning, 2 models, gdm 1, pm 0, id 0             88.78 / 75.76
  global_local  + local triplet loss (llw 1), tested with global + local   88.18 / 73.34
Any dataset works through --config.data.dataset / --config.data.root.
"""

import ml_collections

from configs.market import base_config

VARIANTS = ("global", "mutual", "global_local")


def get_config(variant: str = "global") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f"unknown AlignedReID variant {variant!r}; expected one of {VARIANTS}")
    config = base_config("market1501")
    config.method = "aligned"
    epochs = ml_collections.FieldReference(300)

    config.model = ml_collections.ConfigDict()
    config.model.depth = 50
    config.model.last_stride = 2
    config.model.stem_relu = True  # torchvision's ResNet
    config.model.local_dim = 128  # local stripe feature width
    config.model.use_classifier = True  # the re-production always builds `fc`
    config.model.num_models = 1  # > 1: mutual learning of that many models
    config.model.dtype = "float32"
    config.model.pretrained = ""  # torchvision ImageNet .pth, converted on load

    config.data.ids_per_batch = 32
    config.data.instances_per_id = 4
    config.data.pad = 0  # flip only: no pad + crop, no erasing
    config.data.erase_prob = 0.0
    config.data.mean = (0.486, 0.459, 0.408)
    config.data.std = (0.229, 0.224, 0.225)

    config.loss = ml_collections.ConfigDict()
    config.loss.normalize_feature = False  # as the published runs
    config.loss.global_margin = 0.3
    config.loss.local_margin = 0.3
    config.loss.local_own_hard_mining = False
    config.loss.global_weight = 1.0
    config.loss.local_weight = 0.0
    config.loss.id_weight = 0.0
    config.loss.pm_weight = 1.0
    config.loss.gdm_weight = 1.0
    config.loss.ldm_weight = 0.0

    config.optim = ml_collections.ConfigDict()
    config.optim.schedule = "exp_decay"
    config.optim.base_lr = 2e-4
    config.optim.weight_decay = 5e-4
    config.optim.beta1 = 0.9
    config.optim.beta2 = 0.999
    config.optim.eps = 1e-8
    config.optim.decay_start_epoch = 151
    config.optim.decay_total_epochs = epochs  # follows --config.train.epochs

    config.train.epochs = epochs
    config.train.eval_every_epochs = 50
    config.train.checkpoint_every_epochs = 10

    config.eval.feat_norm = False  # normalize_feature False
    config.eval.distance = "euclidean"

    if variant == "mutual":
        config.model.num_models = 2
        config.loss.pm_weight = 0.0
        config.loss.gdm_weight = 1.0
        config.loss.id_weight = 0.0
    elif variant == "global_local":
        config.loss.local_weight = 1.0
        config.eval.distance = "global_local"
    return config
