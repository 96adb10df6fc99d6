"""The trainable parts: a residual CNN added to the frozen features, and a heatmap refiner.

Refined features. F = n(n(B) + Φ(I)), with B the frozen backbone features on the grid, I the frame at
the feature image size in [−1, 1], n(·) the per-cell L2 normalisation and Φ a small CNN: three 3×3
stride-2 convolutions with padding 1 (ReLU after each) and a 1×1 head to the backbone's channels,
zero-initialised so that training starts from the backbone (F = n(B)). Each centred stride-2 conv puts
output j on input 2j, so Φ's map has stride 8 and offset 0; on a grid of another geometry (DINOv2:
stride 14, offset 6.5) the map is bilinearly resampled at the cells' exact positions (offset + s·j)/8.

Matching a query. The query feature q (F of the query frame bilinearly sampled at the query's grid
position, normalised) against frame t: the cosine map C = ⟨q, F_t⟩ over all cells; its argmax c; the
window of (2R+1)² cells around c (moved inside the grid when c is near the border); the window
bilinearly upsampled u× with align_corners (fine node (m, n) = cell (o_y + m/u, o_x + n/u), o the
window's first cell), K = 2Ru + 1 nodes a side; logits L = C↑/τ_r + ψ(C↑), ψ a few 3×3 convs (the last
zero-initialised: an untrained refiner is a plain temperature softmax); then :func:`soft_argmax`.
"""
import typing

import torch
import torch.nn as nn
import torch.nn.functional as F


def soft_argmax(logits, radius):
    """Sub-pixel peak of heatmaps ``logits`` [M, K1, K2] -> (xy [M, 2], var [M]) in node units.

    p = softmax of the logits restricted to the (2r+1)² nodes around each heatmap's argmax a (nodes
    outside the heatmap do not exist); xy = Σ p·(x, y); var = Σ p·|(x, y) − xy|² / 2 (per-axis second
    moment, the spread that σ is derived from). Exact: for a heatmap whose mass lies within r of its
    argmax, xy is its centre of mass.
    """
    M, K1, K2 = logits.shape
    a = logits.detach().flatten(1).argmax(1)
    ay, ax = a // K2, a % K2
    ys = torch.arange(K1, device=logits.device, dtype=logits.dtype)
    xs = torch.arange(K2, device=logits.device, dtype=logits.dtype)
    my = (ys[None] - ay[:, None].to(ys.dtype)).abs() <= radius          # [M, K1]
    mx = (xs[None] - ax[:, None].to(xs.dtype)).abs() <= radius          # [M, K2]
    mask = my[:, :, None] & mx[:, None, :]
    p = torch.softmax(logits.masked_fill(~mask, float("-inf")).flatten(1), 1).view(M, K1, K2)
    px = (p.sum(1) * xs).sum(-1)
    py = (p.sum(2) * ys).sum(-1)
    var = (p * ((xs[None, None] - px[:, None, None]) ** 2 + (ys[None, :, None] - py[:, None, None]) ** 2)).sum((1, 2))
    return torch.stack([px, py], -1), var / 2




class ResidualCNN(nn.Module):
    """Φ: image [B, 3, H_f, W_f] in [−1, 1] -> residual [B, C, gh, gw] on the backbone grid (see module doc)."""

    def __init__(self, out_channels, hidden=(16, 32, 64)):
        super().__init__()
        if len(hidden) != 3:
            raise ValueError(f"residual CNN needs 3 hidden widths (three stride-2 convs), got {list(hidden)}")
        layers, c = [], 3
        for h in hidden:
            layers += [nn.Conv2d(c, int(h), 3, stride=2, padding=1), nn.ReLU(inplace=True)]
            c = int(h)
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(c, int(out_channels), 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, images, grid):
        x = self.body(images)                                       # stride 8, cell j at pixel 8j
        gh, gw = grid.grid_hw
        if not (grid.stride == 8 and grid.offset == 0 and tuple(x.shape[-2:]) == (gh, gw)):
            h, w = x.shape[-2:]
            ys = (grid.offset + grid.stride * torch.arange(gh, device=x.device, dtype=x.dtype)) / 8.0
            xs = (grid.offset + grid.stride * torch.arange(gw, device=x.device, dtype=x.dtype)) / 8.0
            g = torch.stack(torch.meshgrid(xs * (2.0 / max(w - 1, 1)) - 1.0, ys * (2.0 / max(h - 1, 1)) - 1.0,
                                           indexing="xy"), -1)
            x = F.grid_sample(x, g[None].expand(x.shape[0], -1, -1, -1), mode="bilinear",
                              padding_mode="border", align_corners=True)
        return self.head(x)


class HeatmapRefiner(nn.Module):
    """ψ: upsampled cosine window [M, 1, K, K] -> logits [M, K, K] = C↑/τ_r + ψ(C↑)."""

    def __init__(self, channels=16, layers=3, temperature=0.05):
        super().__init__()
        if layers < 1:
            raise ValueError("refiner_layers must be >= 1")
        mods, c = [], 1
        for _ in range(layers - 1):
            mods += [nn.Conv2d(c, channels, 3, padding=1), nn.ReLU(inplace=True)]
            c = channels
        last = nn.Conv2d(c, 1, 3, padding=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*mods, last)
        self.temperature = float(temperature)

    def forward(self, up):
        return (up / self.temperature + self.net(up))[:, 0]


class Match(typing.NamedTuple):
    uv: torch.Tensor       # [M, 2] refined position, grid coordinates
    var: torch.Tensor      # [M] per-axis spread of the heatmap around it, grid cells²
    coarse: torch.Tensor   # [M, 2] long: the cell (x, y) the window was centred on (before clamping)


class TTOModel(nn.Module):
    """Residual CNN + heatmap refiner for one backbone grid (channels C)."""

    def __init__(self, channels, cfg):
        super().__init__()
        self.residual = ResidualCNN(channels, tuple(cfg.residual_channels))
        self.refiner = HeatmapRefiner(cfg.refiner_channels, cfg.refiner_layers, cfg.refine_temperature)
        self.window = int(cfg.window)
        self.upsample = int(cfg.upsample)
        self.radius = int(cfg.softargmax_radius)
        if self.window < 1 or self.upsample < 1 or self.radius < 0:
            raise ValueError("tto.window and tto.upsample must be >= 1, tto.softargmax_radius >= 0")

    def refined_maps(self, frozen, images, grid):
        """F = n(n(B) + Φ(I)): ``frozen`` [B, C, gh, gw] (any float dtype), ``images`` uint8 [B, H_f, W_f, 3]."""
        x = images.permute(0, 3, 1, 2).float() * (2.0 / 255.0) - 1.0
        base = F.normalize(frozen.float(), dim=1)
        return F.normalize(base + self.residual(x, grid), dim=1)

    def window_radius(self, grid_hw):
        gh, gw = grid_hw
        r = min(self.window, (gh - 1) // 2, (gw - 1) // 2)
        if r < 1:
            raise ValueError(f"feature grid {gw}x{gh} is too small for a refiner window (need at least 3x3 cells)")
        return r

    def refine(self, corr, centre=None):
        """Refined match in cosine maps ``corr`` [M, gh, gw]; ``centre`` [M, 2] long (x, y) cells or None (argmax)."""
        M, gh, gw = corr.shape
        R, u = self.window_radius((gh, gw)), self.upsample
        if centre is None:
            a = corr.detach().flatten(1).argmax(1)
            centre = torch.stack([a % gw, a // gw], -1)
        ox = centre[:, 0].clamp(R, gw - 1 - R) - R
        oy = centre[:, 1].clamp(R, gh - 1 - R) - R
        ar = torch.arange(2 * R + 1, device=corr.device)
        m = torch.arange(M, device=corr.device)
        win = corr[m[:, None, None], (oy[:, None] + ar)[:, :, None], (ox[:, None] + ar)[:, None, :]]
        K = 2 * R * u + 1
        up = F.interpolate(win[:, None], size=(K, K), mode="bilinear", align_corners=True) if u > 1 else win[:, None]
        logits = self.refiner(up)
        xy, var = soft_argmax(logits, self.radius)
        origin = torch.stack([ox, oy], -1).to(xy.dtype)
        return Match(origin + xy / u, var / (u * u), centre)
