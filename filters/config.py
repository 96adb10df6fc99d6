"""Configuration of the candidate filters (YAML section ``filters``): the object mask and feature similarity."""
import dataclasses
from typing import Annotated

from core.config_checks import COSINE, DEVICE, PROBABILITY, RESOLUTION, above, between, one_of
from core.coords import MAX_SIDE


@dataclasses.dataclass
class SAM2Config:
    """SAM2 video predictor (the ``sam2`` package) run on the video, prompted with the query points."""
    checkpoint: str          # file name in $PITRACK_WEIGHTS or a path: sam2.1_hiera_{tiny,small,base_plus,large}.pt, sam2_hiera_*.pt
    model_config: str        # the package's Hydra config name; empty: derived from the checkpoint's file name
    image_size: Annotated[int, between(16, MAX_SIDE)]          # SAM2's square input side (its checkpoints were trained at 1024)
    device: Annotated[str, DEVICE]              # auto | cpu | cuda | cuda:N
    random_init: bool        # tests only: random weights (seeded by the config seed) instead of a checkpoint
    mask_resolution: Annotated[str, RESOLUTION]     # masks are stored at this size (see core.coords.parse_resolution), bit-packed


@dataclasses.dataclass
class OfflineMaskConfig:
    """The mask made from the video itself, for machines without SAM2 weights (filters/offline_mask.py)."""
    resolution: Annotated[str, RESOLUTION]          # working raster of the grouping
    motion_tolerance: Annotated[float, above(0)]  # px (original): a pixel moves with the query when its flow chain stays this close
    min_frames: Annotated[int, between(1, 10 ** 9)]          # … over at least this many frames


@dataclasses.dataclass
class MaskConfig:
    source: Annotated[str, one_of("auto", "sam2", "offline", "none")]
    threshold: Annotated[float, PROBABILITY]         # a candidate whose mask value (bilinear) is below this lies outside its object
    sam2: SAM2Config
    offline: OfflineMaskConfig


@dataclasses.dataclass
class SimilarityConfig:
    """Geometry-aware feature-similarity filter (ProTracker §3.1): cosine similarity to the query's feature."""
    enabled: bool
    source: Annotated[str, one_of("auto", "tto", "geoaware", "dinov2", "raft_fnet")]
    flow_threshold: Annotated[float, COSINE]    # a flow candidate below this similarity is invalid (paper: 0.3)
    keypoint_threshold: Annotated[float, COSINE]  # a keypoint observation below this is invalid (paper: 0.5)
    resolution: Annotated[str, RESOLUTION]          # feature image size for the geoaware / dinov2 / raft_fnet sources
    weights: str             # backbone checkpoint (empty: the default file in $PITRACK_WEIGHTS)
    aggregation_weights: str  # geoaware: the aggregation network (empty: $PITRACK_WEIGHTS/best_856.PTH)
    random_init: bool        # tests only: random backbone / aggregation weights


@dataclasses.dataclass
class FilterConfig:
    mask: MaskConfig
    similarity: SimilarityConfig
