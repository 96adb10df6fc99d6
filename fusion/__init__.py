"""Bidirectional Gaussian integration of flow chains and keypoint observations (issue 4)."""
