"""Quantization techniques, one module per (method, format)."""
