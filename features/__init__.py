"""Frozen backbone features computed once per frame and cached.

``features.backbones``: RAFT-small's feature encoder (stride 8) and DINOv2 ViT-S/14, ViT-B/14 via timm
(stride 14), GeoAware-SC (``features.geoaware``); ``features.grid``: exact maps between pixels and feature cells; ``features.cache``:
:func:`video_features`, float16 features of every frame in the per-video cache.
"""
