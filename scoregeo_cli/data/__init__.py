"""Datasets: manifolds and pairs of endpoints with ground truth where it is known."""
