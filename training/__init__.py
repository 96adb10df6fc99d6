"""Training of pitrack's learned parts, above the stages: the flow heads' occlusion and variance
(:mod:`training.flow_uncertainty`, packaged in flow/weights/) and the PIPs-style track refiner
(:mod:`training.refiner`, fusion/weights/). Both train on synthetic layered videos (synthetic/layers.py)
that they render themselves; the stage packages hold only the inference code and the weights."""
