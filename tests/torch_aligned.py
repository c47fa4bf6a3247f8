"""PyTorch transcription of AlignedReID-Re-Production-Pytorch, for the parity tests.

Line by line as the original (`aligned_reid/model/Model.py`, `model/loss.py`,
`model/TripletLoss.py`, `script/experiment/train_ml.py`), with today's torch signatures
(`addmm(beta=, alpha=)`, `F.kl_div(reduction="sum")` for `size_average=False`):
`Model` (state-dict keys `base.*` torchvision ResNet with the stem ReLU, `local_conv.*`,
`local_bn.*`, `fc.*`), `normalize`, `batch_euclidean_dist`, `shortest_dist` (its double Python
loop), `local_dist`, `batch_local_dist`, `hard_example_mining(return_inds)`, `global_loss`,
`local_loss`, `TripletLoss` and `model_losses` (one model's loss in `train_ml.py`'s thread),
`adjust_lr_exp` (`aligned_reid/utils/utils.py`). `load_flax_variables` copies reid_jax's
AlignedReID variables into a `Model` (for the training-trajectory tests).
`euclidean_dist` is the same function as BoT's, reused from tests/torch_losses.py.
The backbone is tests/torch_reference.py's ResNet. Import after `pytest.importorskip("torch")`.
"""

import torch
import torch.nn.functional as F
import torch_reference
from torch import nn
from torch_losses import euclidean_dist


class Model(nn.Module):
    """The re-production's Model: forward -> (global_feat [N, C], local_feat [N, H, c]
    [, logits [N, num_classes]]). `depth` / `last_stride` are added (the original: ResNet-50,
    last stride 2, ImageNet weights; here the random tests/torch_reference.py ResNet)."""

    def __init__(self, local_conv_out_channels=128, num_classes=None, depth=50, last_stride=2):
        super().__init__()
        self.base = torch_reference.ResNet(depth, last_stride, stem_relu=True)
        planes = 512 * (1 if depth < 50 else 4)
        self.local_conv = nn.Conv2d(planes, local_conv_out_channels, 1)
        self.local_bn = nn.BatchNorm2d(local_conv_out_channels)
        self.local_relu = nn.ReLU(inplace=True)

        if num_classes is not None:
            self.fc = nn.Linear(planes, num_classes)
            nn.init.normal_(self.fc.weight, std=0.001)
            nn.init.constant_(self.fc.bias, 0)

    def forward(self, x):
        feat = self.base(x)
        global_feat = F.avg_pool2d(feat, feat.size()[2:])
        global_feat = global_feat.view(global_feat.size(0), -1)
        local_feat = torch.mean(feat, -1, keepdim=True)
        local_feat = self.local_relu(self.local_bn(self.local_conv(local_feat)))
        local_feat = local_feat.squeeze(-1).permute(0, 2, 1)

        if hasattr(self, "fc"):
            logits = self.fc(global_feat)
            return global_feat, local_feat, logits

        return global_feat, local_feat


def normalize(x, axis=-1):
    x = 1. * x / (torch.norm(x, 2, axis, keepdim=True).expand_as(x) + 1e-12)
    return x


def batch_euclidean_dist(x, y):
    assert len(x.size()) == 3
    assert len(y.size()) == 3
    assert x.size(0) == y.size(0)
    assert x.size(-1) == y.size(-1)

    N, m, d = x.size()
    N, n, d = y.size()

    xx = torch.pow(x, 2).sum(-1, keepdim=True).expand(N, m, n)
    yy = torch.pow(y, 2).sum(-1, keepdim=True).expand(N, n, m).permute(0, 2, 1)
    dist = xx + yy
    dist = dist.baddbmm(x, y.permute(0, 2, 1), beta=1, alpha=-2)
    dist = dist.clamp(min=1e-12).sqrt()
    return dist


def shortest_dist(dist_mat):
    m, n = dist_mat.size()[:2]
    dist = [[0 for _ in range(n)] for _ in range(m)]
    for i in range(m):
        for j in range(n):
            if (i == 0) and (j == 0):
                dist[i][j] = dist_mat[i, j]
            elif (i == 0) and (j > 0):
                dist[i][j] = dist[i][j - 1] + dist_mat[i, j]
            elif (i > 0) and (j == 0):
                dist[i][j] = dist[i - 1][j] + dist_mat[i, j]
            else:
                dist[i][j] = torch.min(dist[i - 1][j], dist[i][j - 1]) + dist_mat[i, j]
    dist = dist[-1][-1]
    return dist


def local_dist(x, y):
    M, m, d = x.size()
    N, n, d = y.size()
    x = x.contiguous().view(M * m, d)
    y = y.contiguous().view(N * n, d)
    dist_mat = euclidean_dist(x, y)
    dist_mat = (torch.exp(dist_mat) - 1.) / (torch.exp(dist_mat) + 1.)
    dist_mat = dist_mat.contiguous().view(M, m, N, n).permute(1, 3, 0, 2)
    dist_mat = shortest_dist(dist_mat)
    return dist_mat


def batch_local_dist(x, y):
    assert len(x.size()) == 3
    assert len(y.size()) == 3
    assert x.size(0) == y.size(0)
    assert x.size(-1) == y.size(-1)

    dist_mat = batch_euclidean_dist(x, y)
    dist_mat = (torch.exp(dist_mat) - 1.) / (torch.exp(dist_mat) + 1.)
    dist = shortest_dist(dist_mat.permute(1, 2, 0))
    return dist


def hard_example_mining(dist_mat, labels, return_inds=False):
    assert len(dist_mat.size()) == 2
    assert dist_mat.size(0) == dist_mat.size(1)
    N = dist_mat.size(0)

    is_pos = labels.expand(N, N).eq(labels.expand(N, N).t())
    is_neg = labels.expand(N, N).ne(labels.expand(N, N).t())

    dist_ap, relative_p_inds = torch.max(
        dist_mat[is_pos].contiguous().view(N, -1), 1, keepdim=True)
    dist_an, relative_n_inds = torch.min(
        dist_mat[is_neg].contiguous().view(N, -1), 1, keepdim=True)
    dist_ap = dist_ap.squeeze(1)
    dist_an = dist_an.squeeze(1)

    if return_inds:
        ind = (labels.new().resize_as_(labels)
               .copy_(torch.arange(0, N).long())
               .unsqueeze(0).expand(N, N))
        p_inds = torch.gather(
            ind[is_pos].contiguous().view(N, -1), 1, relative_p_inds.data)
        n_inds = torch.gather(
            ind[is_neg].contiguous().view(N, -1), 1, relative_n_inds.data)
        p_inds = p_inds.squeeze(1)
        n_inds = n_inds.squeeze(1)
        return dist_ap, dist_an, p_inds, n_inds

    return dist_ap, dist_an


def global_loss(tri_loss, global_feat, labels, normalize_feature=True):
    if normalize_feature:
        global_feat = normalize(global_feat, axis=-1)
    dist_mat = euclidean_dist(global_feat, global_feat)
    dist_ap, dist_an, p_inds, n_inds = hard_example_mining(
        dist_mat, labels, return_inds=True)
    loss = tri_loss(dist_ap, dist_an)
    return loss, p_inds, n_inds, dist_ap, dist_an, dist_mat


def local_loss(tri_loss, local_feat, p_inds=None, n_inds=None, labels=None,
               normalize_feature=True):
    if normalize_feature:
        local_feat = normalize(local_feat, axis=-1)
    if p_inds is None or n_inds is None:
        dist_mat = local_dist(local_feat, local_feat)
        dist_ap, dist_an = hard_example_mining(dist_mat, labels, return_inds=False)
        loss = tri_loss(dist_ap, dist_an)
        return loss, dist_ap, dist_an, dist_mat
    else:
        dist_ap = batch_local_dist(local_feat, local_feat[p_inds])
        dist_an = batch_local_dist(local_feat, local_feat[n_inds])
        loss = tri_loss(dist_ap, dist_an)
        return loss, dist_ap, dist_an


class TripletLoss:
    def __init__(self, margin=None):
        self.margin = margin
        if margin is not None:
            self.ranking_loss = nn.MarginRankingLoss(margin=margin)
        else:
            self.ranking_loss = nn.SoftMarginLoss()

    def __call__(self, dist_ap, dist_an):
        y = torch.ones_like(dist_an)
        if self.margin is not None:
            loss = self.ranking_loss(dist_an, dist_ap, y)
        else:
            loss = self.ranking_loss(dist_an - dist_ap, y)
        return loss


def model_losses(cfg, global_feats, local_feats, logits_list, labels):
    """Every model's loss as `train_ml.py`'s threads compute it (phase 1: forward and separate
    losses; phase 2: mutual losses against the partners' DETACHED outputs).

    cfg: a dict with the original's Config names (normalize_feature, local_dist_own_hard_sample,
    global_margin, local_margin, g/l/id/pm/gdm/ldm_loss_weight). One entry per model in
    `global_feats`, `local_feats`, `logits_list`. Returns a list (per model) of dicts with
    `loss` and its parts (0 for a part that is off, as in the original).
    """
    num_models = len(global_feats)
    n = len(labels)
    g_tri_loss = TripletLoss(margin=cfg["global_margin"])
    l_tri_loss = TripletLoss(margin=cfg["local_margin"])
    id_criterion = nn.CrossEntropyLoss()

    phase1 = []
    for global_feat, local_feat, logits in zip(global_feats, local_feats, logits_list,
                                               strict=True):
        probs = F.softmax(logits, dim=1)
        log_probs = F.log_softmax(logits, dim=1)
        g_loss, p_inds, n_inds, g_dist_ap, g_dist_an, g_dist_mat = global_loss(
            g_tri_loss, global_feat, labels, normalize_feature=cfg["normalize_feature"])
        if cfg["l_loss_weight"] == 0:
            l_loss, l_dist_mat = 0, 0
        elif cfg["local_dist_own_hard_sample"]:
            l_loss, l_dist_ap, l_dist_an, l_dist_mat = local_loss(
                l_tri_loss, local_feat, None, None, labels,
                normalize_feature=cfg["normalize_feature"])
        else:
            l_loss, l_dist_ap, l_dist_an = local_loss(
                l_tri_loss, local_feat, p_inds, n_inds, labels,
                normalize_feature=cfg["normalize_feature"])
            l_dist_mat = 0
        id_loss = 0
        if cfg["id_loss_weight"] > 0:
            id_loss = id_criterion(logits, labels)
        phase1.append(dict(probs=probs, log_probs=log_probs, g_loss=g_loss, l_loss=l_loss,
                           id_loss=id_loss, g_dist_mat=g_dist_mat, l_dist_mat=l_dist_mat,
                           g_dist_ap=g_dist_ap, g_dist_an=g_dist_an))

    results = []
    for i, p in enumerate(phase1):
        pm_loss = 0
        if (num_models > 1) and (cfg["pm_loss_weight"] > 0):
            for j in range(num_models):
                if j != i:
                    pm_loss += F.kl_div(p["log_probs"], phase1[j]["probs"].detach(),
                                        reduction="sum")
            pm_loss /= 1. * (num_models - 1) * n

        gdm_loss = 0
        if (num_models > 1) and (cfg["gdm_loss_weight"] > 0):
            for j in range(num_models):
                if j != i:
                    gdm_loss += torch.sum(torch.pow(
                        p["g_dist_mat"] - phase1[j]["g_dist_mat"].detach(), 2))
            gdm_loss /= 1. * (num_models - 1) * n * n

        ldm_loss = 0
        if (num_models > 1) and cfg["local_dist_own_hard_sample"] \
                and (cfg["ldm_loss_weight"] > 0):
            for j in range(num_models):
                if j != i:
                    ldm_loss += torch.sum(torch.pow(
                        p["l_dist_mat"] - phase1[j]["l_dist_mat"].detach(), 2))
            ldm_loss /= 1. * (num_models - 1) * n * n

        loss = p["g_loss"] * cfg["g_loss_weight"] \
            + p["l_loss"] * cfg["l_loss_weight"] \
            + p["id_loss"] * cfg["id_loss_weight"] \
            + pm_loss * cfg["pm_loss_weight"] \
            + gdm_loss * cfg["gdm_loss_weight"] \
            + ldm_loss * cfg["ldm_loss_weight"]
        results.append(dict(loss=loss, global_loss=p["g_loss"], local_loss=p["l_loss"],
                            id_loss=p["id_loss"], pm_loss=pm_loss, gdm_loss=gdm_loss,
                            ldm_loss=ldm_loss, dist_ap=p["g_dist_ap"].mean(),
                            dist_an=p["g_dist_an"].mean()))
    return results


def adjust_lr_exp(optimizer, base_lr, ep, total_ep, start_decay_at_ep):
    """`aligned_reid/utils/utils.py`'s adjust_lr_exp, as the re-production has it (its log line
    dropped): called at the BEGINNING of 1-based epoch `ep`; leaves the optimizer's lr alone
    before `start_decay_at_ep`, then sets every param group's lr to the decayed value."""
    assert ep >= 1, "Current epoch number should be >= 1"

    if ep < start_decay_at_ep:
        return

    for g in optimizer.param_groups:
        g["lr"] = (base_lr * (0.001 ** (float(ep + 1 - start_decay_at_ep)
                                        / (total_ep + 1 - start_decay_at_ep))))


def _flax_path(key: str) -> tuple[str, tuple[str, ...], str]:
    """A Model state-dict key -> (collection, module path, leaf) of reid_jax's AlignedReID
    variables: `base.*` as BoT's backbone (tests/torch_reference.py), `local_conv`, `local_bn`
    and `fc` at the top level (conv / linear weight -> kernel, BN weight -> scale)."""
    if key.startswith("base."):
        return torch_reference._flax_path(key)
    module, leaf = key.split(".")
    if leaf in ("running_mean", "running_var"):
        return "batch_stats", (module,), {"running_mean": "mean", "running_var": "var"}[leaf]
    if leaf == "weight":
        return "params", (module,), "scale" if module == "local_bn" else "kernel"
    return "params", (module,), "bias"


def load_flax_variables(model: Model, variables: dict) -> Model:
    """Copies reid_jax AlignedReID variables {'params', 'batch_stats'} of ONE model into
    `model` (torch_reference.copy_flax_variables)."""
    return torch_reference.copy_flax_variables(model, variables, _flax_path)


def config_names(loss) -> dict:
    """reid_jax's AlignedReID loss settings (`config.loss`, a ConfigDict) under the
    re-production's Config names, as `model_losses` takes them."""
    return dict(normalize_feature=loss.normalize_feature,
                local_dist_own_hard_sample=loss.local_own_hard_mining,
                global_margin=loss.global_margin, local_margin=loss.local_margin,
                g_loss_weight=loss.global_weight, l_loss_weight=loss.local_weight,
                id_loss_weight=loss.id_weight, pm_loss_weight=loss.pm_weight,
                gdm_loss_weight=loss.gdm_weight, ldm_loss_weight=loss.ldm_weight)
