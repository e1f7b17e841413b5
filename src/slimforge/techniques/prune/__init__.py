"""Pruning: unstructured (magnitude masks made permanent) and structured (Torch-Pruning's dependency graph)."""
