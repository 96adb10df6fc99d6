"""Configuration of the per-video test-time optimisation and the keypoint provider (YAML section ``tto``)."""
import dataclasses


def _residual_channels():
    return [8, 16, 32]


def _check_intervals():
    return [2, 4, 8, 16, 32]


@dataclasses.dataclass
class TTOConfig:
    enabled: bool = False          # long-term keypoint observations from a per-video optimised model
    device: str = "auto"           # auto (cuda if available, else cpu) | cpu | cuda | cuda:N
    # CPU threads for optimisation and matching (0: leave torch's setting). Its many small operations
    # run best on 1 thread: 2 threads were 1.5-8x slower per step when another process shared the cores.
    threads: int = 0

    # --- model (tto/model.py) ---
    residual_channels: list[int] = dataclasses.field(default_factory=_residual_channels)  # 3 stride-2 convs
    refiner_channels: int = 16     # width of the heatmap refiner's hidden convs
    refiner_layers: int = 3        # 3x3 convs in the refiner (the last one zero-initialised)
    window: int = 4                # R: the refiner sees (2R+1)² grid cells around the cosine map's argmax
    upsample: int = 2              # u: that window is upsampled u× (bilinear) before the refiner
    softargmax_radius: int = 3     # r: fine nodes (1/u cell each) around the heatmap's argmax in the soft-argmax
    refine_temperature: float = 0.05   # τ_r: the heatmap's logits are cos/τ_r + refiner(cos)

    # --- optimisation (tto/train.py) ---
    steps: int = 300
    lr: float = 1.0e-3
    lr_min_ratio: float = 0.1      # cosine decay from lr to lr·lr_min_ratio after the warm-up
    warmup_steps: int = 20         # linear warm-up
    weight_decay: float = 0.0
    frames_per_step: int = 3       # F frames drawn per step; each of their F(F−1) ordered pairs is a training pair
    traj_per_pair: int = 32        # flow-trajectory correspondences per pair (fewer when fewer exist)
    buddies_per_pair: int = 32     # best-buddy (mutual nearest neighbour) matches per pair
    cycle_per_pair: int = 16       # random points of frame s for the cycle-consistency loss
    huber_delta: float = 2.0       # δ of the Huber position loss (feature-image px)
    w_position: float = 1.0        # Huber(refined position − trajectory position)
    w_contrast: float = 1.0        # InfoNCE of best buddies over the whole target frame
    w_traj_contrast: float = 0.5   # the same InfoNCE for trajectory correspondences (bilinear soft target)
    w_cycle: float = 0.5           # Huber(s -> t -> s position − start)
    contrast_temperature: float = 0.07
    buddy_min_sim: float = 0.5     # best buddies need this backbone cosine similarity
    cycle_min_sim: float = 0.6     # cycle loss only where the forward match is at least this similar
    checkpoint_every: int = 50     # steps between checkpoints in the per-video cache (and at the end)

    # --- training trajectories from the flow bank (tto/pairs.py) ---
    traj_anchor_stride: int = 8    # chains start at frames 0, k, 2k, … and the last frame, both directions
    traj_grid: float = 16.0        # spacing (px, original resolution) of the points seeded at each anchor
    traj_check_intervals: list[int] = dataclasses.field(default_factory=_check_intervals)  # Δ checked by direct flow
    traj_occlusion_threshold: float = 0.5   # a chain step (or a direct flow) is trusted below this occlusion
    traj_tol: float = 3.0          # px (original resolution): |chained − direct| allowed …
    traj_tol_frac: float = 0.05    # … plus this fraction of the direct displacement

    # --- keypoint provider (tto/keypoints.py) ---
    # a refined match is an observation when its cosine similarity is above this (the paper: 0.7 on its
    # DINO features; RAFT-encoder features after optimisation are more similar overall, 0.8 measured better)
    similarity_threshold: float = 0.8
    cycle_tolerance: float = 0.5   # … and its match back in the query frame lands within this many cells (0: off)
    sigma_floor: float = 2.0       # px (original resolution): least σ of an observation
    sigma_gain: float = 1.0        # σ = max(gain · heatmap spread, floor)
    eval_batch: int = 1024         # (query, frame) windows per refiner call
