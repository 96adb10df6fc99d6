"""Per-video test-time optimisation of the feature extractor and heatmap refiner (issue 5)."""
