"""Configuration of the per-video test-time optimisation and the keypoint provider (YAML section ``tto``)."""
import dataclasses




@dataclasses.dataclass
class TTOConfig:
    enabled: bool  # long-term keypoint observations from a per-video optimised model
    device: str  # auto (cuda if available, else cpu) | cpu | cuda | cuda:N
    # CPU threads for the optimisation and the refined maps (0: leave torch's setting). Its many small
    # operations run best on 1 thread: 2 threads were 1.5-8x slower per step when another process shared
    # the cores. Keypoint matching (large batched products) uses torch's setting.
    threads: int

    # --- model (tto/model.py) ---
    residual_channels: list[int]  # 3 stride-2 convs
    refiner_channels: int  # width of the heatmap refiner's hidden convs
    refiner_layers: int  # 3x3 convs in the refiner (the last one zero-initialised)
    window: int  # R: the refiner sees (2R+1)² grid cells around the cosine map's argmax
    upsample: int  # u: that window is upsampled u× (bilinear) before the refiner
    softargmax_radius: int  # r: fine nodes (1/u cell each) around the heatmap's argmax in the soft-argmax
    refine_temperature: float  # τ_r: the heatmap's logits are cos/τ_r + refiner(cos)

    # --- optimisation (tto/train.py) ---
    steps: int
    lr: float
    lr_min_ratio: float  # cosine decay from lr to lr·lr_min_ratio after the warm-up
    warmup_steps: int  # linear warm-up
    weight_decay: float
    frames_per_step: int  # F frames drawn per step; each of their F(F−1) ordered pairs is a training pair
    traj_per_pair: int  # flow-trajectory correspondences per pair (fewer when fewer exist)
    buddies_per_pair: int  # best-buddy (mutual nearest neighbour) matches per pair
    cycle_per_pair: int  # random points of frame s for the cycle-consistency loss
    huber_delta: float  # δ of the Huber position loss (feature-image px)
    w_position: float  # Huber(refined position − trajectory position)
    w_contrast: float  # InfoNCE of best buddies over the whole target frame
    w_traj_contrast: float  # the same InfoNCE for trajectory correspondences (bilinear soft target)
    w_cycle: float  # Huber(s -> t -> s position − start)
    contrast_temperature: float
    buddy_min_sim: float  # best buddies need this backbone cosine similarity
    cycle_min_sim: float  # cycle loss only where the forward match is at least this similar
    checkpoint_every: int  # steps between checkpoints in the per-video cache (and at the end)

    # --- training trajectories from the flow bank (tto/pairs.py) ---
    traj_anchor_stride: int  # chains start at frames 0, k, 2k, … and the last frame, both directions
    traj_grid: float  # spacing (px, original resolution) of the points seeded at each anchor
    traj_check_intervals: list[int]  # Δ checked by direct flow
    traj_occlusion_threshold: float  # a chain step (or a direct flow) is trusted below this occlusion
    traj_tol: float  # px (original resolution): |chained − direct| allowed …
    traj_tol_frac: float  # … plus this fraction of the direct displacement

    # --- keypoint provider (tto/keypoints.py) ---
    # a refined match is an observation when its cosine similarity is above this (the paper: 0.7 on its
    # DINO features; RAFT-encoder features after optimisation are more similar overall, 0.8 measured better)
    similarity_threshold: float
    cycle_tolerance: float  # … and its match back in the query frame lands within this many cells (0: off)
    sigma_floor: float  # px (original resolution): least σ of an observation
    sigma_gain: float  # σ = max(gain · heatmap spread, floor)
    eval_batch: int  # (query, frame) windows per refiner call
