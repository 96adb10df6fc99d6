"""Configuration of the frozen backbone features (YAML section ``features``)."""
import dataclasses
from typing import Annotated

from core.config_checks import DEVICE, PROBABILITY, RESOLUTION, above, between, fits_memory, one_of


@dataclasses.dataclass
class FeatureConfig:
    # raft_small: the feature encoder of the pretrained RAFT-small (stride 8, 128 channels; the default here)
    # dinov2_vits14 / dinov2_vitb14: DINOv2 ViT-S/14 (384 channels) / ViT-B/14 (768) through timm (stride 14)
    # geoaware: GeoAware-SC, DINOv2 ViT-B/14 block 11 + the official aggregation network (768, stride 14);
    #   PARTIAL here: only its DINO branch (no Stable Diffusion), see features/geoaware.py
    # xfeat (64, stride 8), aliked_t16 (64) / aliked_n16 / aliked_n16rot / aliked_n32 (128), disk (128): pretrained
    #   local-feature networks from registry packages; xfeat_aliked_n16: both, cosine averaged (features/pretrained.py)
    backbone: Annotated[str, one_of("raft_small", "dinov2_vits14", "dinov2_vitb14", "geoaware", "xfeat", "aliked_t16",
                                    "aliked_n16", "aliked_n16rot", "aliked_n32", "disk", "xfeat_aliked_n16")]
    # Target size of the *feature image* (the frames resized before the backbone), see
    # core.coords.parse_resolution; each side is then rounded to a multiple of the backbone's stride.
    resolution: Annotated[str, RESOLUTION]
    weights: str  # explicit checkpoint; empty: $PITRACK_WEIGHTS/<raft-small.pth | dinov2_vit{s,b}14_pretrain.pth>
    aggregation_weights: str  # geoaware only: the GeoAware-SC aggregation checkpoint; empty: $PITRACK_WEIGHTS/best_856.PTH
    allow_download: bool  # raft_small only: torchvision's own download when no file is found (needs internet)
    random_init: bool  # DINOv2 / geoaware only: random weights seeded by the config seed (tests; meaningless features)
    dense_stride: Annotated[int, one_of(1, 2, 4, 8)]  # aliked_* / disk: their full-resolution map averaged over s×s
    batch_size: Annotated[int, fits_memory(1, 4 * 3 * 1024 * 1024)]  # frames per backbone call (a 1024² float32 RGB input each)
    device: Annotated[str, DEVICE]  # auto (cuda if available, else cpu) | cpu | cuda | cuda:N


@dataclasses.dataclass
class MatcherConfig:
    """Long-term correspondences from LightGlue (features/matcher.py), fused with the keypoint observations."""
    enabled: bool
    features: Annotated[str, one_of("aliked_n16", "disk")]  # keypoints and descriptors LightGlue was trained on
    resolution: Annotated[str, RESOLUTION]  # feature image (each side a multiple of 16)
    max_keypoints: Annotated[int, between(16, 8192)]  # detections per frame (highest scores)
    frame_stride: Annotated[int, between(1, 10 ** 9)]  # match the query frames with every k-th frame (others: no observation)
    min_score: Annotated[float, PROBABILITY]  # a match is an observation from this LightGlue matching score on
    sigma: Annotated[float, above(0)]  # σ of a match of score 1 (original px); score s gives σ / sqrt(s)
    visibility: bool  # occluded where LightGlue matched the frame but left the query without a match
    device: Annotated[str, DEVICE]
