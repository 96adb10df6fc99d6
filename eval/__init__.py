"""Evaluation: dataset readers (TAP-Vid format, BADJA), TAP-Vid and BADJA metrics, scoring and benchmarks."""
