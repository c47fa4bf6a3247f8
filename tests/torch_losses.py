"""PyTorch transcriptions of reid-strong-baseline's losses, shared by the parity tests.

Line by line as the original: CrossEntropyLabelSmooth (scatter one-hot, `.mean(0).sum()`),
euclidean_dist (`addmm`, `clamp(min=1e-12).sqrt()`), hard_example_mining (torch.max / torch.min
over dim on the masked `.view(N, -1)`), TripletLoss (nn.MarginRankingLoss / nn.SoftMarginLoss) and
CenterLoss (masked expanded distmat, clamp, / B). Import after `pytest.importorskip("torch")`.
"""

import torch


def cross_entropy_label_smooth(inputs, targets, num_classes, epsilon):
    log_probs = torch.nn.LogSoftmax(dim=1)(inputs)
    targets = torch.zeros(log_probs.size(), dtype=inputs.dtype).scatter_(
        1, targets.unsqueeze(1), 1)
    targets = (1 - epsilon) * targets + epsilon / num_classes
    return (-targets * log_probs).mean(0).sum()


def euclidean_dist(x, y):
    m, n = x.size(0), y.size(0)
    xx = torch.pow(x, 2).sum(1, keepdim=True).expand(m, n)
    yy = torch.pow(y, 2).sum(1, keepdim=True).expand(n, m).t()
    dist = xx + yy
    dist = dist.addmm(x, y.t(), beta=1, alpha=-2)
    return dist.clamp(min=1e-12).sqrt()


def hard_example_mining(dist_mat, labels):
    n = dist_mat.size(0)
    is_pos = labels.expand(n, n).eq(labels.expand(n, n).t())
    is_neg = labels.expand(n, n).ne(labels.expand(n, n).t())
    dist_ap, _ = torch.max(dist_mat[is_pos].contiguous().view(n, -1), 1, keepdim=True)
    dist_an, _ = torch.min(dist_mat[is_neg].contiguous().view(n, -1), 1, keepdim=True)
    return dist_ap.squeeze(1), dist_an.squeeze(1)


def triplet_loss(global_feat, labels, margin):
    dist_mat = euclidean_dist(global_feat, global_feat)
    dist_ap, dist_an = hard_example_mining(dist_mat, labels)
    y = torch.ones_like(dist_an)
    if margin is not None:
        loss = torch.nn.MarginRankingLoss(margin=margin)(dist_an, dist_ap, y)
    else:
        loss = torch.nn.SoftMarginLoss()(dist_an - dist_ap, y)
    return loss, dist_ap, dist_an


def center_loss(x, labels, centers):
    batch_size, num_classes = x.size(0), centers.size(0)
    distmat = (torch.pow(x, 2).sum(dim=1, keepdim=True).expand(batch_size, num_classes)
               + torch.pow(centers, 2).sum(dim=1, keepdim=True).expand(num_classes, batch_size).t())
    distmat = distmat.addmm(x, centers.t(), beta=1, alpha=-2)
    classes = torch.arange(num_classes).long()
    labels = labels.unsqueeze(1).expand(batch_size, num_classes)
    mask = labels.eq(classes.expand(batch_size, num_classes))
    dist = distmat * mask.float()
    return dist.clamp(min=1e-12, max=1e12).sum() / batch_size


def bot_loss(cls_score, global_feat, labels, centers, num_classes, epsilon=0.1, margin=0.3,
             center_weight=0.0005):
    """BoT's `loss_func` for 'softmax_triplet_center' with label smoothing on:
    xent(score) + triplet(feat) + center_weight * center(feat). Returns (total, parts dict)."""
    id_loss = cross_entropy_label_smooth(cls_score, labels, num_classes, epsilon)
    tri_loss = triplet_loss(global_feat, labels, margin)[0]
    cen_loss = center_loss(global_feat, labels, centers)
    total = id_loss + tri_loss + center_weight * cen_loss
    return total, {"id_loss": id_loss, "triplet_loss": tri_loss, "center_loss": cen_loss}
