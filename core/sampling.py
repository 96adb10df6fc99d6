"""Bilinear sampling of stacks of fields at point sets (pixel-centre convention, working pixels)."""
import torch
import torch.nn.functional as F


def sample_fields(fields, points):
    """Bilinear samples of G fields at G point sets.

    ``fields`` float [G, C, h, w]; ``points`` float [G, M, 2] (x, y) pixel-centre convention, so pixel
    (i, j) has its centre at x = j, y = i. Returns [G, M, C]. Points beyond the outermost pixel centres
    take the border value (callers decide what leaving the frame means).
    """
    G, C, h, w = fields.shape
    gx = points[..., 0] * (2.0 / max(w - 1, 1)) - 1.0          # grid_sample(align_corners=True): centres at ±1
    gy = points[..., 1] * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack([gx, gy], -1)[:, None].to(fields.dtype)   # [G, 1, M, 2]
    out = F.grid_sample(fields, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out[:, :, 0].permute(0, 2, 1)                         # [G, M, C]


def sample_map(fmap, uv):
    """Bilinear samples of one map ``fmap`` [C, h, w] (float16 maps are sampled in float32) at ``uv`` [M, 2]
    (x, y; index convention) -> [M, C]. Border clamp; differentiable with respect to both the map and the
    positions."""
    return sample_fields(fmap[None].float(), uv[None])[0]
