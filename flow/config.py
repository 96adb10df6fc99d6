"""Configuration of the flow stage (YAML section ``flow``)."""
import dataclasses


@dataclasses.dataclass
class FlowConfig:
    backend: str = "raft_small"   # raft_small | raft_large | dis
    resolution: str = "native"    # working resolution of the flow stage, see pitrack.coords.parse_resolution
    iterations: int = 12          # RAFT refinement iterations
    weights: str = ""             # explicit checkpoint path; empty: $PITRACK_WEIGHTS/<default file>, else torchvision download
    batch_size: int = 4           # frame pairs per network evaluation
    dis_preset: str = "medium"    # OpenCV DIS preset: ultrafast | fast | medium
