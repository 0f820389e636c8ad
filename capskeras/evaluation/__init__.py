"""Generalization and equivariance evaluation, and the figures they draw."""
