"""Configuration of the flow-chain tracker (YAML section ``chain``)."""
import dataclasses



@dataclasses.dataclass
class ChainConfig:
    # Δ of the candidates: flow(t−Δ → t) chained onto the estimate at t−Δ; 'inf' is the query frame itself
    intervals: list[str]
    occlusion_threshold: float  # a candidate is visible when its occlusion probability is below this
    query_sigma: float  # σ (working px) of the query position itself
    drift_var: float  # q (working px² per frame): process noise of chaining; a link over Δ frames adds q·Δ to σ²
    query_frames_per_chunk: int  # queries × frames tracked together (keypoints, filters, integration)

    def __post_init__(self):
        if not self.drift_var >= 0:
            from core.errors import ConfigError
            raise ConfigError(f"chain.drift_var must be >= 0 (px² per frame), got {self.drift_var}")

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
                raise ConfigError(f"chain.intervals: {s!r} is neither a positive integer nor 'inf'") from None
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
    correlation: float  # ρ between candidates' errors in the merge (0: independent, 1: no reduction)
    outlier_removal: bool  # drop candidates far from the least-σ visible one before merging
    outlier_radius: float  # px at the original resolution
    backward: bool  # a sweep from the last frame toward the first with backward flows
    backward_replace_smaller_sigma: bool  # the sweep also replaces visible estimates of larger σ
    backward_sources: str  # the sweep chains 'anchored' estimates (keypoint-confirmed) or 'all'
    observation_gate: float  # px (original): a keypoint farther from a visible estimate is dropped; 0: none

    def __post_init__(self):
        if self.backward_sources not in ("anchored", "all"):
            from core.errors import ConfigError
            raise ConfigError(f"fusion.backward_sources must be 'anchored' or 'all', got {self.backward_sources!r}")


@dataclasses.dataclass
class VisibilityConfig:
    """Visibility from flow and appearance (YAML section ``visibility``, fusion/visibility.py)."""
    appearance: bool              # also require the appearance: similarity to the query's template
    similarity_threshold: float   # τ: absolute floor of that cosine similarity (filters.similarity.source features)
    relative_threshold: float     # r: ... and at least r times the point's median similarity while flow-visible


@dataclasses.dataclass
class RefinerConfig:
    """The PIPs-style track refiner run on the integrator's tracks (YAML section ``refiner``, fusion/refiner.py)."""
    enabled: bool
    weights: str          # refiner file; empty: the packaged fusion/weights/refiner.pt
    encoder_weights: str  # RAFT-small checkpoint of the frozen encoder; empty: $PITRACK_WEIGHTS/raft-small.pth
    resolution: str       # feature image of that encoder (stride 8)
    window: int           # S: frames per window; windows from the query frame overlap by one
    iterations: int       # updates per window
    visibility: str       # refiner (its own head) | input (the integrator's) | both (visible where both say so)

    def __post_init__(self):
        from core.errors import ConfigError
        if self.visibility not in ("refiner", "input", "both"):
            raise ConfigError(f"refiner.visibility must be refiner, input or both, got {self.visibility!r}")
        if int(self.window) < 2 or int(self.iterations) < 1:
            raise ConfigError(f"refiner.window must be >= 2 and refiner.iterations >= 1, got {self.window} and "
                              f"{self.iterations}")
