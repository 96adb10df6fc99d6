"""Configuration of the flow stage (YAML section ``flow``)."""
import dataclasses
from typing import Annotated

from core.config_checks import DEVICE, MACHINE_BYTES, RESOLUTION, above, at_least, between, one_of


@dataclasses.dataclass
class FlowConfig:
    backend: Annotated[str, one_of("raft_small", "raft_large", "dis")]
    resolution: Annotated[str, RESOLUTION]  # working resolution of the flow stage, see core.coords.parse_resolution
    iterations: Annotated[int, between(1, 1000)]  # RAFT refinement iterations (time linear in them)
    weights: str  # explicit checkpoint path; empty: $PITRACK_WEIGHTS/<default file>, else torchvision download
    batch_size: Annotated[int, between(1, 1024)]  # frame pairs per network evaluation (memory: flow.raft.correlation_bytes)
    memory_mb: Annotated[float, between(0, MACHINE_BYTES / 2 ** 20)]  # flows held in memory at most (MB); over it, pairs are released and computed again
    cache: Annotated[str, one_of("auto", "on", "off")]  # flows on disk: auto (RAFT only: DIS recomputes faster than it reads) | on | off
    dis_preset: Annotated[str, one_of("ultrafast", "fast", "medium")]  # OpenCV DIS preset
    allow_download: bool  # no checkpoint file found: let torchvision download its own RAFT weights (needs internet)
    device: Annotated[str, DEVICE]  # RAFT device: auto (cuda if available, else cpu) | cpu | cuda | cuda:N
    # Occlusion / uncertainty of every flow field: fb = forward–backward formulas (flow/occlusion.py),
    # learned = a head trained on synthetic videos (flow/learned_uncertainty.py); learned_variance = the head's
    # variance with the formulas' occlusion.
    uncertainty: Annotated[str, one_of("fb", "learned", "learned_variance")]
    uncertainty_weights: str  # learned: head file; empty: the packaged head of the backend (flow/weights/)
    fb_tau: Annotated[float, above(0)]  # τ0 (working px): FB residual scale of a visible pixel; p_occ(r=τ0) ≈ 0.39, (2τ0) ≈ 0.86
    fb_alpha: Annotated[float, at_least(0)]  # τ² = τ0² + α·(|F_ab|² + |F_ba(p+F_ab)|²): large motions are allowed larger residuals
    var_floor: Annotated[float, above(0)]  # σ0² (working px²): per-axis flow variance the FB check cannot see (consistent errors)
    var_gain: Annotated[float, at_least(0)]  # k in σ² = σ0² + k·r²; 0.25 = r²/4 is the per-axis variance estimate for i.i.d. errors
    var_max: Annotated[float, above(0)]  # cap on σ² (px²); also the variance of pixels whose flow leaves the frame
