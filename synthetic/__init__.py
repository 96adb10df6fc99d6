"""Procedural synthetic training data with exact ground truth: see synthetic.layers (import from there;
this package imports nothing, so that ``python -m synthetic.layers`` runs cleanly)."""
