"""Techniques: quantization, pruning, distillation, low-rank, fusion. ``slimforge.techniques.builtin`` registers
them all (through the ``slimforge.techniques`` entry point, on first use of the registry)."""
