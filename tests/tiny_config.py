"""The demo config shrunk to seconds, loadable as `--config=tests/tiny_config.py[:method]`
(from the repository root) and importable by the tests: ResNet-18 at 64x48 on a synthetic
dataset of 12 train / 10 test identities (pass --config.data.root=DIR to share one between
runs). The argument picks the method: "bot" (default) or "aligned" (2 mutually learning models,
global + local losses)."""

import ml_collections

from configs import aligned, demo


def get_config(method: str = "bot") -> ml_collections.ConfigDict:
    if method == "aligned":
        config = aligned.get_config("mutual")
        config.model.depth = 18
        config.loss.local_weight = 1.0
        config.loss.id_weight = 1.0
        config.optim.decay_start_epoch = 2
        config.train.epochs = 4
        config.data.dataset = "synthetic"
        config.data.synthetic = demo.get_config().data.synthetic
    elif method == "bot":
        config = demo.get_config()
    else:
        raise ValueError(f"unknown method {method!r}; expected 'bot' or 'aligned'")
    config.data.image_size = (64, 48)
    config.data.pad = 2 if method == "bot" else 0
    config.data.ids_per_batch = 4
    config.data.instances_per_id = 4
    config.data.eval_batch_size = 32
    config.data.synthetic.update(num_train_ids=12, num_test_ids=10, num_cameras=3,
                                 images_per_id_per_camera=3, image_size=(64, 48))
    config.train.log_every_steps = 100
    return config
