"""Evaluation of the enhancement model and the quality check, and benchmarks (outside the MAP; results in docs/)."""
