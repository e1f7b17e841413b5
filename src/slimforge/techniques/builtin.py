"""The built-in techniques: importing this module registers every built-in config and handler. It is the ``builtin``
entry of the ``slimforge.techniques`` entry point group (pyproject.toml), which the registry loads on first use, so
that importing one technique module (or running a command that fails on its input) does not import them all."""

from slimforge.convert import onnx as _export_onnx  # noqa: F401
from slimforge.convert import openvino as _convert_openvino  # noqa: F401
from slimforge.convert import optimize as _graph_optimize  # noqa: F401
from slimforge.techniques import normalize as _normalize  # noqa: F401
from slimforge.techniques.quantize import cast as _q_cast  # noqa: F401
from slimforge.techniques.quantize import onnx_dynamic as _q_onnx_dynamic  # noqa: F401
from slimforge.techniques.quantize import mixed as _q_mixed  # noqa: F401
from slimforge.techniques.quantize import onnx_static as _q_onnx_static  # noqa: F401
from slimforge.techniques.quantize import openvino as _q_openvino  # noqa: F401
from slimforge.techniques.quantize import qat as _q_qat  # noqa: F401
from slimforge.techniques.quantize import torch_dynamic as _q_torch_dynamic  # noqa: F401
from slimforge.techniques.quantize import torch_fp8 as _q_torch_fp8  # noqa: F401
from slimforge.techniques.quantize import torch_int8_gpu as _q_torch_int8_gpu  # noqa: F401
from slimforge.techniques.quantize import torch_pt2e as _q_torch_pt2e  # noqa: F401
from slimforge.techniques.quantize import weight_only as _q_weight_only  # noqa: F401
from slimforge.techniques import fuse as _fuse  # noqa: F401
from slimforge.techniques import gpu as _gpu  # noqa: F401
from slimforge.techniques import lowrank as _lowrank  # noqa: F401
from slimforge.techniques.prune import torch_prune as _prune  # noqa: F401
from slimforge.techniques.prune import subnet_config as _subnet_config  # noqa: F401
from slimforge.techniques.distill import torch_distill as _distill  # noqa: F401
