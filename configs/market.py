"""BoT strong baseline on Market-1501 (ResNet-50, last stride 1, BNNeck, LS + triplet + center).

Usage:
  python -m reid_jax.main --config=configs/market.py --config.data.root=/data/Market-1501-v15.09.15
  python -m reid_jax.main --config=configs/market.py:bnneck ...   # a row of the paper's ablation

The argument picks a row of the BoT paper's ablation table (REFERENCE section 6); each row adds
one trick to the previous one: baseline, warmup, erasing, smoothing, stride1, bnneck, bot (all).

BoT's other backbones (its MODEL.NAME) by backbone and depth, e.g. resnet50_ibn_a (BoT's best
row, Market 95.0 / 88.2):
  ... --config.model.backbone=resnet_ibn_a                            # resnet{50,101,152}_ibn_a
  ... --config.model.backbone=se_resnet --config.model.depth=101      # se_resnet{50,101,152}
  ... --config.model.backbone=se_resnext                              # se_resnext{50,101}
with --config.model.pretrained=PATH.pth for the ImageNet weights (IBN-Net's / Cadene's).
"""

import ml_collections

ABLATION_ROWS = ("baseline", "warmup", "erasing", "smoothing", "stride1", "bnneck", "bot")


def base_config(dataset: str) -> ml_collections.ConfigDict:
    """The full BoT recipe, shared by every dataset config."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.method = "bot"  # reid_jax.methods: "bot" | "aligned"

    config.model = ml_collections.ConfigDict()
    # "resnet" | "resnet_ibn_a" | "se_resnet" | "se_resnext" (reid_jax.models.backbones); with
    # `depth`, BoT's MODEL.NAME. stem_relu applies to "resnet" (the others keep the stem ReLU).
    config.model.backbone = "resnet"
    config.model.depth = 50
    config.model.last_stride = 1
    config.model.stem_relu = False  # BoT's backbone has no ReLU after the stem BN.
    config.model.neck = "bnneck"  # "bnneck" | "no"
    config.model.neck_feat = "after"  # inference feature: "after" | "before" the neck
    config.model.dtype = "float32"  # compute dtype: "float32" | "bfloat16"
    config.model.pretrained = ""  # torchvision ImageNet .pth, converted on load

    config.data = ml_collections.ConfigDict()
    config.data.dataset = dataset
    config.data.root = ""
    # dataset "pattern": any folder layout, read by a file-name regex (data_pipelines/datasets/
    # pattern.py): groups pid and camid (cameras numbered from first_camera) or index (camera =
    # (index - index_offset) // images_per_camera); empty camera tuples keep every camera.
    config.data.pattern = ml_collections.ConfigDict({
        "regex": "", "train_dir": "bounding_box_train", "query_dir": "query",
        "gallery_dir": "bounding_box_test", "images_per_camera": 0, "index_offset": 0,
        "first_camera": 1, "query_cameras": (), "gallery_cameras": ()})
    config.data.image_size = (256, 128)  # (H, W)
    config.data.ids_per_batch = 16  # P
    config.data.instances_per_id = 4  # K
    config.data.flip_prob = 0.5
    config.data.pad = 10
    config.data.erase_prob = 0.5
    config.data.erase_fill = "mean"  # "mean": reference quirk; "zero": zeros after normalising
    config.data.mean = (0.485, 0.456, 0.406)
    config.data.std = (0.229, 0.224, 0.225)
    config.data.augment_on = "auto"  # "host" (tf.data) | "device" (in the step) | "auto"
    config.data.eval_batch_size = 128
    config.data.cache = True

    config.loss = ml_collections.ConfigDict()
    config.loss.id_weight = 1.0
    config.loss.label_smoothing = 0.1
    config.loss.triplet_weight = 1.0
    config.loss.triplet_margin = 0.3  # None -> soft margin
    config.loss.center_weight = 0.0005  # 0 disables the center loss
    config.loss.center_lr = 0.5

    config.optim = ml_collections.ConfigDict()
    config.optim.schedule = "warmup_multistep"  # lr per epoch, as BoT's WarmupMultiStepLR
    config.optim.base_lr = 3.5e-4
    config.optim.weight_decay = 5e-4
    config.optim.beta1 = 0.9
    config.optim.beta2 = 0.999
    config.optim.eps = 1e-8
    config.optim.warmup_epochs = 10
    config.optim.warmup_factor = 0.01
    config.optim.milestones = (40, 70)
    config.optim.gamma = 0.1

    config.train = ml_collections.ConfigDict()
    config.train.epochs = 120
    config.train.log_every_steps = 20
    config.train.eval_every_epochs = 40
    config.train.checkpoint_every_epochs = 10
    config.train.checkpoint_every_steps = 0  # > 0: also mid-epoch (long epochs, e.g. MSMT17)
    config.train.keep_checkpoints = 3

    config.eval = ml_collections.ConfigDict()
    config.eval.feat_norm = True
    config.eval.distance = "squared_euclidean"  # "squared_euclidean" | "euclidean" | "cosine"
    config.eval.flip = False
    config.eval.max_rank = 50
    config.eval.rerank = False
    config.eval.k1 = 20
    config.eval.k2 = 6
    config.eval.lambda_value = 0.3
    config.eval.chunk_size = 1024
    config.eval.dataset = ""  # cross-domain: evaluate on another dataset ...
    config.eval.root = ""  # ... read from this folder

    config.visualize = ml_collections.ConfigDict()  # --mode=visualize
    config.visualize.num_queries = 8
    config.visualize.select = "hardest"  # "hardest" (lowest AP) | "random"
    config.visualize.top_k = 10
    config.visualize.seed = 0
    return config


def apply_ablation(config: ml_collections.ConfigDict, row: str) -> ml_collections.ConfigDict:
    """Turns tricks off to reproduce an ablation row; "bot" keeps them all."""
    if row not in ABLATION_ROWS:
        raise ValueError(f"unknown ablation row {row!r}; expected one of {ABLATION_ROWS}")
    enabled = set(ABLATION_ROWS[1:ABLATION_ROWS.index(row) + 1])
    if "warmup" not in enabled:
        config.optim.warmup_epochs = 0
    if "erasing" not in enabled:
        config.data.erase_prob = 0.0
    if "smoothing" not in enabled:
        config.loss.label_smoothing = 0.0
    if "stride1" not in enabled:
        config.model.last_stride = 2
    if "bnneck" not in enabled:
        config.model.neck = "no"
    if "bot" not in enabled:
        config.loss.center_weight = 0.0
    return config


def get_config(row: str = "bot") -> ml_collections.ConfigDict:
    return apply_ablation(base_config("market1501"), row)
