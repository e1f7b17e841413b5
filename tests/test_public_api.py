"""The public API is pinned: changing it is a deliberate act."""

import slimforge

PINNED = [
    "Artifact", "BenchResult", "BenchSpec", "Check", "Config", "ConfigError", "DataError", "Format", "IOSpec",
    "InputError", "MissingDependencyError", "ModelLoadError", "OptimizeResult", "Recipe", "RunContext",
    "SlimforgeError", "Step", "TechniqueFailed", "TensorSpec", "Timing", "UnsupportedModelError",
    "VerificationError", "__version__", "benchmark", "benchmark_devices", "evaluate", "export", "info", "load",
    "load_data", "open_session", "optimize", "profile", "quantize", "save", "prune", "distill", "lowrank", "fuse",
    "AutoResult", "Goals", "Target", "auto_optimize_for_deployment", "load_optimized", "search_architecture",
    "tune_threads",
]


def test_all_is_pinned():
    assert sorted(slimforge.__all__) == sorted(PINNED)
    for name in PINNED:
        assert hasattr(slimforge, name), name


def test_import_is_light():
    import subprocess
    import sys

    code = "import sys, slimforge; print(sorted(m for m in ('onnxruntime','openvino','transformers','onnx') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"import slimforge pulled in backends: {out}"
