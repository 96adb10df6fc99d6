"""Configuration of the frozen backbone features (YAML section ``features``)."""
import dataclasses


@dataclasses.dataclass
class FeatureConfig:
    # raft_small: the feature encoder of the pretrained RAFT-small (stride 8, 128 channels; the default here)
    # dinov2_vits14 / dinov2_vitb14: DINOv2 ViT-S/14 (384 channels) / ViT-B/14 (768) through timm (stride 14)
    backbone: str = "raft_small"
    # Target size of the *feature image* (the frames resized before the backbone), see
    # pitrack.coords.parse_resolution; each side is then rounded to a multiple of the backbone's stride.
    resolution: str = "512x288"
    weights: str = ""             # explicit checkpoint; empty: $PITRACK_WEIGHTS/<raft-small.pth | dinov2_vit{s,b}14_pretrain.pth>
    allow_download: bool = False  # raft_small only: torchvision's own download when no file is found (needs internet)
    random_init: bool = False     # DINOv2 only: random weights seeded by the config seed (tests; meaningless features)
    batch_size: int = 4           # frames per backbone call
    device: str = "auto"          # auto (cuda if available, else cpu) | cpu | cuda | cuda:N
