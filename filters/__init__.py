"""Candidate filters: SAM2 mask filter and geometry-aware feature-similarity filter."""
