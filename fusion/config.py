"""Configuration of the flow-chain tracker (YAML section ``chain``)."""
import dataclasses
from typing import Annotated

from core.config_checks import COSINE, PROBABILITY, RESOLUTION, above, at_least, between, fits_memory, one_of
from core.errors import quoted


@dataclasses.dataclass
class ChainConfig:
    # Δ of the candidates: flow(t−Δ → t) chained onto the estimate at t−Δ; 'inf' is the query frame itself
    intervals: list[str]
    occlusion_threshold: Annotated[float, PROBABILITY]  # a candidate is visible when its occlusion probability is below this
    query_sigma: Annotated[float, above(0)]  # σ (working px) of the query position itself
    drift_var: Annotated[float, at_least(0)]  # q (working px² per frame): process noise of chaining; a link over Δ frames adds q·Δ to σ²
    query_frames_per_chunk: Annotated[int, fits_memory(1, 64)]  # queries × frames tracked together (keypoints, filters, integration)

    def __post_init__(self):
        self.parsed_intervals()            # a bad interval is an error when the config is read

    def parsed_intervals(self):
        """Sorted finite intervals (ints >= 1) and whether the query-frame interval 'inf' is used."""
        from core.errors import ConfigError
        finite, use_inf = set(), False
        for s in self.intervals:
            if str(s).lower() in ("inf", ".inf", "infinity"):
                use_inf = True
                continue
            try:
                d = int(s)
            except ValueError:
                raise ConfigError(f"chain.intervals: {quoted(s)} is neither a positive integer nor 'inf'") from None
            if d < 1:
                raise ConfigError(f"chain.intervals: {d} must be >= 1")
            finite.add(d)
        if not finite and not use_inf:
            raise ConfigError("chain.intervals is empty")
        return sorted(finite), use_inf


@dataclasses.dataclass
class FusionConfig:
    """How the candidates of a frame become one estimate (YAML section ``fusion``)."""
    probabilistic: bool  # merge visible candidates by inverse variance; False: take the least σ
    correlation: Annotated[float, PROBABILITY]  # ρ between candidates' errors in the merge (0: independent, 1: no reduction)
    spread_variance: bool  # the merged σ² also adds the candidates' weighted scatter (law of total variance)
    outlier_removal: bool  # drop candidates far from the least-σ visible one before merging
    outlier_radius: Annotated[float, above(0)]  # px at the original resolution
    backward: bool  # a sweep from the last frame toward the first with backward flows
    backward_replace_smaller_sigma: bool  # the sweep also replaces visible estimates of larger σ
    backward_sources: Annotated[str, one_of("anchored", "all")]  # the sweep chains 'anchored' estimates (keypoint-confirmed) or 'all'
    observation_gate: Annotated[float, at_least(0)]  # px (original): a keypoint farther from a visible estimate is dropped; 0: none


@dataclasses.dataclass
class VisibilityConfig:
    """Visibility from flow and appearance (YAML section ``visibility``, fusion/visibility.py)."""
    appearance: bool              # also require the appearance: similarity to the query's template
    similarity_threshold: Annotated[float, COSINE]   # τ: absolute floor of that cosine similarity (filters.similarity.source features)
    relative_threshold: Annotated[float, at_least(0)]     # r: ... and at least r times the point's median similarity while flow-visible


@dataclasses.dataclass
class RefinerConfig:
    """The PIPs-style track refiner run on the integrator's tracks (YAML section ``refiner``, fusion/refiner.py)."""
    enabled: bool
    weights: str          # refiner file; empty: the packaged fusion/weights/refiner.pt
    encoder_weights: str  # RAFT-small checkpoint of the frozen encoder; empty: $PITRACK_WEIGHTS/raft-small.pth
    resolution: Annotated[str, RESOLUTION]       # feature image of that encoder (stride 8)
    window: Annotated[int, between(2, 1024)]           # S: frames per window; windows from the query frame overlap by one
    iterations: Annotated[int, between(1, 1000)]       # updates per window
    visibility: Annotated[str, one_of("refiner", "input", "both")]       # refiner (its own head) | input (the integrator's) | both (visible where both say so)
