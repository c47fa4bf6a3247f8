"""The BoT total loss: id_weight L_id + triplet_weight L_tri + center_weight L_center."""

import jax
import jax.numpy as jnp
import ml_collections

from reid_jax.losses.center import center_loss
from reid_jax.losses.metric import triplet_loss
from reid_jax.losses.softmax import cross_entropy_label_smooth


def check_loss_config(loss_config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first `config.loss` key whose value is out of range."""
    for key in ("id_weight", "triplet_weight", "center_weight"):
        if not loss_config[key] >= 0:
            raise ValueError(f"config.loss.{key}={loss_config[key]!r}: expected a weight >= 0")
    if not 0 <= loss_config.label_smoothing < 1:
        raise ValueError(f"config.loss.label_smoothing={loss_config.label_smoothing!r}: "
                         "expected 0 <= epsilon < 1")
    margin = loss_config.triplet_margin
    if margin is not None and not margin >= 0:
        raise ValueError(f"config.loss.triplet_margin={margin!r}: expected >= 0, or None for the "
                         "soft margin")


def bot_loss(logits: jax.Array, global_feat: jax.Array, labels: jax.Array, centers: jax.Array,
             loss_config: ml_collections.ConfigDict) -> tuple[jax.Array, dict[str, jax.Array]]:
    """BoT's training loss over the global PK batch.

    logits: [B, C] float32 from the BNNeck feature (L_id). global_feat: [B, D] float32 before the
    neck (L_tri, L_center). labels: [B] int32 in [0, C). centers: [C, D] float32.
    loss_config: `config.loss` (id_weight, label_smoothing, triplet_weight, triplet_margin (None:
    soft margin), center_weight (0: no center term; its metric reads 0)).

    Returns (total float32 scalar, metrics): float32 scalars `loss`, `id_loss`, `triplet_loss`,
    `center_loss` (unweighted), `id_accuracy` (argmax logits == label), `dist_ap`, `dist_an`
    (batch means of the mined distances).
    """
    check_loss_config(loss_config)
    batch = labels.shape[0]
    if logits.shape[0] != batch or global_feat.shape[0] != batch:
        raise ValueError(f"bot_loss: logits {logits.shape}, global_feat {global_feat.shape} and "
                         f"labels {labels.shape} must share the batch size")
    if centers.shape != (logits.shape[1], global_feat.shape[1]):
        raise ValueError(f"bot_loss: centers {centers.shape}, expected (num_classes, dim) = "
                         f"{(logits.shape[1], global_feat.shape[1])}")

    id_loss = cross_entropy_label_smooth(logits, labels, loss_config.label_smoothing)
    tri_loss, dist_ap, dist_an = triplet_loss(global_feat, labels, loss_config.triplet_margin)
    total = loss_config.id_weight * id_loss + loss_config.triplet_weight * tri_loss
    if loss_config.center_weight > 0:
        cen_loss = center_loss(global_feat, labels, centers)
        total = total + loss_config.center_weight * cen_loss
    else:
        cen_loss = jnp.zeros((), jnp.float32)
    metrics = {
        "loss": total,
        "id_loss": id_loss,
        "triplet_loss": tri_loss,
        "center_loss": cen_loss,
        "id_accuracy": jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)),
        "dist_ap": jnp.mean(dist_ap),
        "dist_an": jnp.mean(dist_an),
    }
    return total, metrics
