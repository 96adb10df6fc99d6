"""The maths of integration: Gaussian chaining and merging, the bidirectional integrator with its candidate-filter
hook, and visibility from flow and appearance. Tensors in, estimates out; the pipeline wires it."""
