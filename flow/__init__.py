"""Optical flow stage: flows between frame t−Δ and t for the configured intervals, both directions,
each with an occlusion probability and a variance, cached per video."""
