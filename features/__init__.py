"""Frozen backbone features computed once per frame and cached (issue 5).

``features.backbones``: RAFT-small's feature encoder (stride 8) and DINOv2 ViT-S/14, ViT-B/14 via timm
(stride 14); ``features.grid``: exact maps between pixels and feature cells; ``features.cache``:
:func:`video_features`, float16 features of every frame in the per-video cache.
"""
