"""Conversion: ONNX export, verification, graph optimisation and model inspection."""
