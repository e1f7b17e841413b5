"""Built-in techniques. Importing this package registers every config and handler."""

from slimforge.convert import onnx as _export_onnx  # noqa: F401
from slimforge.convert import optimize as _graph_optimize  # noqa: F401
from slimforge.techniques.quantize import onnx_dynamic as _q_onnx_dynamic  # noqa: F401
