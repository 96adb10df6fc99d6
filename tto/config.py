"""Configuration of the per-video test-time optimisation and the keypoint provider (YAML section ``tto``)."""
import dataclasses
from typing import Annotated

from core.config_checks import COSINE, DEVICE, PROBABILITY, above, at_least, between, fits_memory


@dataclasses.dataclass
class TTOConfig:
    enabled: bool  # long-term keypoint observations from a per-video optimised model
    device: Annotated[str, DEVICE]  # auto (cuda if available, else cpu) | cpu | cuda | cuda:N
    # CPU threads for the optimisation and the refined maps (0: leave torch's setting). Its many small
    # operations run best on 1 thread: 2 threads were 1.5-8x slower per step when another process shared
    # the cores. Keypoint matching (large batched products) uses torch's setting.
    threads: Annotated[int, between(0, 4096)]

    # --- model (tto/model.py) ---
    residual_channels: list[Annotated[int, between(1, 4096)]]  # 3 stride-2 convs
    refiner_channels: Annotated[int, between(1, 4096)]  # width of the heatmap refiner's hidden convs
    refiner_layers: Annotated[int, between(1, 256)]  # 3x3 convs in the refiner (the last one zero-initialised)
    window: Annotated[int, between(1, 256)]  # R: the refiner sees (2R+1)² grid cells around the cosine map's argmax
    upsample: Annotated[int, between(1, 64)]  # u: that window is upsampled u× (bilinear) before the refiner
    softargmax_radius: Annotated[int, between(0, 256 * 64)]  # r: fine nodes (1/u cell each) around the heatmap's argmax in the soft-argmax
    refine_temperature: Annotated[float, above(0)]  # τ_r: the heatmap's logits are cos/τ_r + refiner(cos)

    # --- optimisation (tto/train.py) ---
    steps: Annotated[int, between(0, 10 ** 9)]
    lr: Annotated[float, above(0)]
    lr_min_ratio: Annotated[float, PROBABILITY]  # cosine decay from lr to lr·lr_min_ratio after the warm-up
    warmup_steps: Annotated[int, between(0, 10 ** 9)]  # linear warm-up
    weight_decay: Annotated[float, at_least(0)]
    frames_per_step: Annotated[int, between(2, 1024)]  # F frames drawn per step; each of their F(F−1) ordered pairs is a training pair
    traj_per_pair: Annotated[int, fits_memory(0, 1024 ** 2)]  # flow-trajectory correspondences per pair (fewer when fewer exist)
    buddies_per_pair: Annotated[int, fits_memory(0, 1024 ** 2)]  # best-buddy (mutual nearest neighbour) matches per pair
    cycle_per_pair: Annotated[int, fits_memory(0, 1024 ** 2)]  # random points of frame s for the cycle-consistency loss
    huber_delta: Annotated[float, above(0)]  # δ of the Huber position loss (feature-image px)
    w_position: Annotated[float, at_least(0)]  # Huber(refined position − trajectory position)
    w_contrast: Annotated[float, at_least(0)]  # InfoNCE of best buddies over the whole target frame
    w_traj_contrast: Annotated[float, at_least(0)]  # the same InfoNCE for trajectory correspondences (bilinear soft target)
    w_cycle: Annotated[float, at_least(0)]  # Huber(s -> t -> s position − start)
    contrast_temperature: Annotated[float, above(0)]
    buddy_min_sim: Annotated[float, COSINE]  # best buddies need this backbone cosine similarity
    cycle_min_sim: Annotated[float, COSINE]  # cycle loss only where the forward match is at least this similar
    checkpoint_every: Annotated[int, between(1, 10 ** 9)]  # steps between checkpoints in the per-video cache (and at the end)

    # --- training trajectories from the flow bank (tto/pairs.py) ---
    traj_anchor_stride: Annotated[int, between(1, 10 ** 9)]  # chains start at frames 0, k, 2k, … and the last frame, both directions
    traj_grid: Annotated[float, above(0)]  # spacing (px, original resolution) of the points seeded at each anchor
    traj_check_intervals: list[Annotated[int, between(1, 10 ** 9)]]  # Δ checked by direct flow
    traj_occlusion_threshold: Annotated[float, PROBABILITY]  # a chain step (or a direct flow) is trusted below this occlusion
    traj_tol: Annotated[float, at_least(0)]  # px (original resolution): |chained − direct| allowed …
    traj_tol_frac: Annotated[float, at_least(0)]  # … plus this fraction of the direct displacement

    # --- keypoint provider (tto/keypoints.py) ---
    # a refined match is an observation when its cosine similarity is above this (the paper: 0.7 on its
    # DINO features; RAFT-encoder features after optimisation are more similar overall, 0.8 measured better)
    similarity_threshold: Annotated[float, COSINE]
    cycle_tolerance: Annotated[float, at_least(0)]  # … and its match back in the query frame lands within this many cells (0: off)
    sigma_floor: Annotated[float, above(0)]  # px (original resolution): least σ of an observation
    sigma_gain: Annotated[float, at_least(0)]  # σ = max(gain · heatmap spread, floor)
    eval_batch: Annotated[int, fits_memory(1, 4096)]  # (query, frame) windows per refiner call (a few kB each)

    @property
    def optimises(self):
        """Whether the per-video model is optimised (keypoints on, at least one step); with ``steps: 0`` the
        keypoints match in the frozen backbone's normalised features and no training trajectory is read."""
        return bool(self.enabled) and int(self.steps) > 0
