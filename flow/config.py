"""Configuration of the flow stage (YAML section ``flow``)."""
import dataclasses


@dataclasses.dataclass
class FlowConfig:
    backend: str  # raft_small | raft_large | dis
    resolution: str  # working resolution of the flow stage, see core.coords.parse_resolution
    iterations: int  # RAFT refinement iterations
    weights: str  # explicit checkpoint path; empty: $PITRACK_WEIGHTS/<default file>, else torchvision download
    batch_size: int  # frame pairs per network evaluation
    memory_mb: float  # flows held in memory at most (MB); over it, pairs are released and computed again
    cache: str  # flows on disk: auto (RAFT only: DIS recomputes faster than it reads) | on | off
    dis_preset: str  # OpenCV DIS preset: ultrafast | fast | medium
    allow_download: bool  # no checkpoint file found: let torchvision download its own RAFT weights (needs internet)
    device: str  # RAFT device: auto (cuda if available, else cpu) | cpu | cuda | cuda:N
    # Occlusion / uncertainty of every flow field: fb = forward–backward formulas (flow/occlusion.py),
    # learned = a head trained on synthetic videos (flow/learned_uncertainty.py).
    uncertainty: str  # fb | learned
    uncertainty_weights: str  # learned: head file; empty: the packaged head of the backend (flow/weights/)
    fb_tau: float  # τ0 (working px): FB residual scale of a visible pixel; p_occ(r=τ0) ≈ 0.39, (2τ0) ≈ 0.86
    fb_alpha: float  # τ² = τ0² + α·(|F_ab|² + |F_ba(p+F_ab)|²): large motions are allowed larger residuals
    var_floor: float  # σ0² (working px²): per-axis flow variance the FB check cannot see (consistent errors)
    var_gain: float  # k in σ² = σ0² + k·r²; 0.25 = r²/4 is the per-axis variance estimate for i.i.d. errors
    var_max: float  # cap on σ² (px²); also the variance of pixels whose flow leaves the frame
