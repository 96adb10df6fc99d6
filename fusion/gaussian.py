"""Isotropic Gaussian algebra of position estimates: chaining, outlier removal, merging, selection.

An estimate is a mean x (px, (x, y)) and a per-axis variance σ² (px²). Shapes: candidates [N, K, 2]
means, [N, K] variances, [N, K] bool masks (N queries, K candidates each). Torch tensors.
"""
import torch


def chain_gaussian(mean, var, flow, flow_var):
    """Move an estimate through a flow sampled at its mean: x' = x + F(x), σ'² = σ² + σ_F²(x).

    The flow's Jacobian is treated as orthogonal (locally rigid motion), so an isotropic variance stays
    isotropic and the two errors, being independent, add.
    """
    return mean + flow, var + flow_var


def merge_weights(var, mask):
    """Inverse-variance weights w_i = (1/σ_i²) / Σ_j (1/σ_j²) over the candidates in ``mask``; 0 elsewhere."""
    inv = torch.where(mask, 1.0 / var.clamp_min(1e-12), torch.zeros_like(var))
    total = inv.sum(-1, keepdim=True)
    return inv / torch.where(total > 0, total, torch.ones_like(total))


def merge_gaussians(mean, var, mask, rho, spread=False):
    """Fuse K estimates whose errors are pairwise correlated with coefficient ρ.

    Mean: x = Σ w_i x_i with the inverse-variance weights of :func:`merge_weights`. Variance of that
    weighted sum when corr(e_i, e_j) = ρ for i ≠ j:

        σ² = Σ_i w_i² σ_i² + ρ Σ_{i≠j} w_i w_j σ_i σ_j = (1 − ρ) Σ_i w_i² σ_i² + ρ (Σ_i w_i σ_i)².

    ρ = 0 gives σ² = 1 / Σ 1/σ_i² (the product of independent Gaussians); ρ = 1 gives (Σ w_i σ_i)², which
    for equal σ_i is σ² itself: correlated estimates bring no variance reduction. Candidates of one
    point share frames and flows, so their errors are correlated; 0 < ρ < 1 sits between the two.

    ``spread``: add the candidates' weighted scatter about the merged mean, per axis,

        σ² += ½ Σ_i w_i ‖x_i − x‖²,

    the between-candidates term of the law of total variance (the merge read as a mixture whose
    component i holds the point with probability w_i). The formula above measures only how far the
    candidates *could* be apart; this term adds how far they *are* apart, so disagreeing candidates
    give a larger σ than agreeing ones of the same variances.
    Returns mean [N, 2], variance [N] and the weights [N, K]; rows with an empty mask get weight 0 and
    variance 0 (callers must handle them).
    """
    w = merge_weights(var, mask)
    sigma = var.clamp_min(0).sqrt()
    m = (w[..., None] * torch.where(mask[..., None], mean, torch.zeros_like(mean))).sum(-2)
    s_var = (1.0 - rho) * (w * w * torch.where(mask, var, torch.zeros_like(var))).sum(-1) \
        + rho * (w * torch.where(mask, sigma, torch.zeros_like(sigma))).sum(-1) ** 2
    if spread:
        d2 = ((mean - m[..., None, :]) ** 2).sum(-1)
        s_var = s_var + 0.5 * (w * torch.where(mask, d2, torch.zeros_like(d2))).sum(-1)
    return m, s_var, w


def least_sigma_index(var, mask):
    """Index [N] of the candidate of least variance among ``mask`` (0 where the mask is empty)."""
    big = torch.full_like(var, torch.finfo(var.dtype).max)
    return torch.where(mask, var, big).argmin(-1)


def reject_outliers(mean, var, mask, radius):
    """Keep the masked candidates within ``radius`` px of the most trustworthy (least-σ²) masked candidate."""
    k = least_sigma_index(var, mask)
    best = mean[torch.arange(mean.shape[0]), k]                  # [N, 2]
    dist = (mean - best[:, None]).norm(dim=-1)
    return mask & (dist <= radius)


def merge_observation_sources(sources, gate):
    """One observation per (query, frame) from several independent sources [(xy [N, T, 2], var [N, T], ok [N, T])]:
    those within ``gate`` px of the source of least variance are fused (:func:`merge_gaussians`, ρ = 0), the
    others dropped; ok where any source is. Returns (xy, var, ok) of the first source's shapes."""
    xy = torch.stack([s[0] for s in sources], -2)                       # [N, T, S, 2]
    var = torch.stack([s[1] for s in sources], -1).float()               # [N, T, S]
    ok = torch.stack([s[2] for s in sources], -1)
    N, T, S = ok.shape
    flat = (xy.reshape(N * T, S, 2).float(), var.reshape(N * T, S), ok.reshape(N * T, S))
    keep = reject_outliers(*flat, gate)
    m, v, _ = merge_gaussians(flat[0], flat[1], keep, 0.0)
    return m.reshape(N, T, 2), v.reshape(N, T), ok.any(-1)
