"""Typer app: every command builds a recipe or request and calls the API; ``--dry-run`` prints the recipe."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from slimforge.cli.common import (Arch, ArchKwargs, Force, InputShape, ModelArg, Preprocess, Task, Weights, drop,
                                  load_model, load_models, parse_batches, with_overrides)
from slimforge.cli.render import console, err_console, print_checks, print_measurements
from slimforge.errors import TERMINATION, ConfigError, SlimforgeError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Make trained models smaller and faster, verified and measured on your hardware.")


@app.command()
def info(model: ModelArg = None, input_shape: InputShape = None, task: Task = None,
         as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False, arch: Arch = None,
         weights: Weights = None, arch_kwargs: ArchKwargs = None) -> None:
    """Show inputs, outputs, op histogram, parameter count and size."""
    from slimforge.convert.info import model_info

    data = model_info(with_overrides(load_model(model, input_shape, arch=arch, weights=weights,
                                                arch_kwargs=arch_kwargs), task, None))
    if as_json:
        console.print_json(json.dumps(data, default=str))
        return
    table = Table(title=f"{data['name']} ({data['format']})", show_header=False)
    for key in ("path", "task", "runs_at", "dynamic_sizes", "runs_at_error", "producer", "opset", "parameters", "flops_per_example_batch", "size_mb",
                "external_data", "custom_domains", "nodes"):
        if data.get(key) not in (None, "", [], {}):
            table.add_row(key, str(data[key]))
    for kind in ("inputs", "outputs"):
        for t in data[kind]:
            table.add_row(kind[:-1], f"{t['name']}  {t['dtype']}  {t['shape']}")
    console.print(table)
    hist = data.get("op_histogram") or data.get("module_histogram") or {}
    if hist:
        console.print("ops: " + ", ".join(f"{k}={v}" for k, v in list(hist.items())[:25]))


@app.command()
def export(model: ModelArg = None,
           output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the .onnx file.")] = Path(
               "slimforge-out/model.onnx"),
           opset: Annotated[int, typer.Option(help="ONNX opset.")] = 17,
           dynamic_axes: Annotated[Optional[list[str]], typer.Option(
               "--dynamic-axes", help="NAME:0=batch,1=sequence (repeatable); inferred when omitted.")] = None,
           exporter: Annotated[str, typer.Option(help="auto | torchscript | dynamo")] = "auto",
           atol: Annotated[float, typer.Option(help="Verification tolerance (max abs error).")] = 1e-4,
           verify: Annotated[bool, typer.Option(help="Verify against the source model.")] = True,
           input_shape: InputShape = None,
           dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the recipe and stop.")] = False,
           arch: Arch = None, weights: Weights = None, arch_kwargs: ArchKwargs = None) -> None:
    """Export a PyTorch model to ONNX, verified against the source on several input shapes."""
    from slimforge.convert.onnx import ExportConfig
    from slimforge.plan.recipe import Recipe

    cfg = ExportConfig(opset=opset, dynamic_axes=tuple(dynamic_axes or ()), exporter=_enum("exporter", exporter),
                       atol=atol, verify=verify)
    if dry_run:
        console.print(Recipe(steps=(cfg,), runtime="onnxruntime").to_yaml())
        return
    from slimforge.api import export as api_export
    from slimforge.cli.progress import progress_bars

    art = load_model(model, input_shape, arch=arch, weights=weights, arch_kwargs=arch_kwargs)
    with progress_bars(err_console) as progress:
        out = api_export(art, output, opset=opset, dynamic_axes=cfg.dynamic_axes, exporter=exporter, verify=verify,
                         atol=atol, progress=progress)
    print_checks(out)
    console.print(f"wrote {out.path}  ({out.size_bytes() / 1e6:.1f} MB, exporter "
                  f"{out.meta.get('exporter')})")


@app.command()
def benchmark(models: Annotated[Optional[list[str]], typer.Argument(help="One or more models.")] = None,
              runtime: Annotated[Optional[str], typer.Option(help="torch | onnxruntime | openvino")] = None,
              batch: Annotated[str, typer.Option(help="Batch sizes, comma-separated.")] = "1,32",
              data: Annotated[Optional[Path], typer.Option(help="Data to build inputs from.")] = None,
              threads: Annotated[Optional[int], typer.Option(help="Intra-op threads.")] = None,
              repeats: Annotated[int, typer.Option(help="Minimum timed runs per batch size.")] = 20,
              input_shape: InputShape = None, preprocess: Preprocess = None,
              json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write results as JSON.")] = None,
              arch: Annotated[Optional[str], typer.Option(
                  help="package.module:Class for the state dict files among MODELS (and --weights).")] = None,
              weights: Annotated[Optional[Path], typer.Option(
                  help="A state dict for --arch, measured first (the baseline).")] = None,
              arch_kwargs: ArchKwargs = None,
              device: Annotated[str, typer.Option(help="cpu, cuda, or cpu,cuda: the CPU-vs-GPU cost table.")] = "cpu",
              price: Annotated[Optional[list[str]], typer.Option(
                  help="$/hour of a device, e.g. --price cpu=0.20 --price cuda=3.50.")] = None,
              output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Where the cost table goes.")
                                    ] = Path("slimforge-out/benchmark"),
              force: Force = False) -> None:
    """Measure latency p50/p95/p99 (medians with 95% intervals, models timed side by side in interleaved rounds),
    speedup over the first model, throughput, peak memory and size. With --device cpu,cuda or --price: per device
    the throughput, the cost of 1,000 inferences and the GPU's speedup, as a CSV and a plot."""
    from slimforge.api import benchmark as api_benchmark
    from slimforge.api import benchmark_devices as api_benchmark_devices
    from slimforge.api import benchmark_report
    from slimforge.bench import BenchSpec
    from slimforge.cli.progress import progress_bars

    batches = parse_batches(batch)
    arts = [with_overrides(a, None, preprocess)
            for a in load_models(models, input_shape, arch=arch, weights=weights, arch_kwargs=arch_kwargs)]
    if device != "cpu" or price:
        from slimforge.bench.cost import parse_prices
        from slimforge.cli.render import print_cost

        if len(arts) != 1:
            raise ConfigError("the CPU-vs-GPU cost table takes one model; give one MODEL")
        print_cost(api_benchmark_devices(arts[0], devices=[d.strip() for d in device.split(",") if d.strip()],
                                         prices=parse_prices(price or []), runtime=runtime, batch_sizes=batches,
                                         data=data, threads=threads, spec=BenchSpec(repeats=repeats),
                                         output_dir=output_dir, force=force), output_dir)
        return
    if json_out:
        from slimforge.core.outputs import prepare_output_file

        json_out = prepare_output_file(json_out, inputs=[a.path for a in arts])
    with progress_bars(err_console) as progress:
        results = api_benchmark(arts, runtime=runtime, batch_sizes=batches, data=data, threads=threads,
                                spec=BenchSpec(repeats=repeats), progress=progress)
    report = benchmark_report(results, arts, data)
    print_measurements(report, title="benchmark (interleaved; ratios against the first model)")
    if json_out:
        from slimforge.core.outputs import write_text

        write_text(json_out, json.dumps(report, indent=2, default=str))


@app.command()
def quantize(model: ModelArg = None,
             method: Annotated[str, typer.Option(
                 help="dynamic | static | fp16 | bf16 | int4 | int8-weight | fp8 (GPU) | qat (PyTorch)")] = "dynamic",
             calibration: Annotated[str, typer.Option(help="minmax | entropy | percentile (static)")] = "minmax",
             per_channel: Annotated[bool, typer.Option(help="Per-channel weight scales.")] = True,
             runtime: Annotated[Optional[str], typer.Option(
                 help="torch | torch_compile | onnxruntime | openvino")] = None,
             data: Annotated[Optional[Path], typer.Option(help="Calibration data (static needs it).")] = None,
             output: Annotated[Optional[Path], typer.Option("-o", "--output", help=(
                 "Output file: .onnx (onnxruntime), .xml + .bin (openvino), .pt TorchScript (torch)."))] = None,
             num_samples: Annotated[int, typer.Option(help="Calibration samples.")] = 128,
             exclude: Annotated[Optional[list[str]], typer.Option(help="Node/layer names kept in float.")] = None,
             min_cosine: Annotated[Optional[float], typer.Option(
                 help="Fidelity floor: output cosine to FP32 below which the step fails.")] = None,
             max_drop: Annotated[Optional[str], typer.Option(
                 help="Quality budget (accuracy points, e.g. 0.5 or 0.5%; or cosine drop): keeps the fewest "
                      "layers in float that meet it.")] = None,
             batch: Annotated[str, typer.Option(help="Batch sizes for the speed check.")] = "1,32",
             input_shape: InputShape = None, task: Task = None, preprocess: Preprocess = None,
             dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the recipe and stop.")] = False,
             arch: Arch = None, weights: Weights = None, arch_kwargs: ArchKwargs = None) -> None:
    """Quantize with one method for one runtime; verified, and checked against its FP32 input for speed. When the
    method finds nothing it applies to in the model (int4 on a CNN: no MatMul), it says "nothing was quantized"
    and exits 2, writing nothing."""
    from slimforge.plan.recipe import Recipe
    from slimforge.techniques.quantize.methods import QuantizeOptions, default_runtime_for

    opts = QuantizeOptions(method=method, calibration=calibration, per_channel=per_channel, num_samples=num_samples,
                           exclude=tuple(exclude or ()), min_cosine=min_cosine, max_drop=drop(max_drop))
    art = with_overrides(load_model(model, input_shape, arch=arch, weights=weights, arch_kwargs=arch_kwargs), task,
                         preprocess)
    rt = runtime or default_runtime_for(art, opts.method)
    if dry_run:
        console.print(Recipe(steps=tuple(opts.steps(art, rt)), runtime=rt, batch_sizes=parse_batches(batch)).to_yaml())
        return
    from slimforge.api import quantize as api_quantize
    from slimforge.cli.progress import progress_bars

    suffix = ".pt" if rt in ("torch", "torch_compile") else ".xml" if rt == "openvino" else ".onnx"
    final_path = output or Path("slimforge-out") / f"{art.name}-{opts.method.value}{suffix}"
    with progress_bars(err_console) as progress:  # the API refuses a path or suffix that does not fit, before work
        q = api_quantize(art, opts, data=data, runtime=rt, output=final_path, batch_sizes=parse_batches(batch),
                         progress=progress)
    print_checks(q)
    if q.meta.get("float_layers") is not None:
        layers = q.meta["float_layers"]
        console.print(f"kept in float ({len(layers)}): {', '.join(layers) or 'none'}", soft_wrap=True)
    if q.meta.get("report"):
        print_measurements(q.meta["report"], title="speed check: FP32 input (B) vs quantized, side by side")
    speed = next((c for c in q.step_checks if c.name == "no_slowdown"), None)
    if speed is not None:
        console.print(("warning: " if not speed.passed else "") + speed.detail +
                      ("; the auto-optimizer will not pick it" if not speed.passed else ""), soft_wrap=True)
    console.print(f"wrote {q.path}  ({q.size_bytes() / 1e6:.2f} MB, was {art.size_bytes() / 1e6:.2f} MB)")


def _enum(name: str, value: str) -> Any:
    from slimforge.convert.onnx import Exporter

    try:
        return Exporter(value)
    except ValueError:
        raise ConfigError(f"--{name} must be one of {[e.value for e in Exporter]}, got {value!r}") from None


_DEBUG = {"on": False}


def _print_version(value: bool) -> None:
    if value:
        from slimforge.version import __version__

        print(f"slimforge {__version__}")
        raise typer.Exit(0)


@app.callback()
def _options(debug: Annotated[bool, typer.Option(
                 "--debug", help="Show tracebacks of unexpected errors and third-party warnings.")] = False,
             version: Annotated[bool, typer.Option(
                 "--version", "-V", is_eager=True, callback=_print_version,
                 help="Print the version and exit.")] = False) -> None:
    """Make trained models smaller and faster, verified and measured on your hardware."""
    _DEBUG["on"] = debug or _DEBUG["on"]
    if debug:
        _configure_logging(True)


def _configure_logging(debug: bool) -> None:
    """Plain runs: slimforge's warnings only; third-party warnings and logs stay in slimforge's log (DEBUG, see
    ``core.logs``), unseen. ``--debug`` or ``SLIMFORGE_LOG=debug``: everything, third-party output included."""
    import os
    import warnings

    level = os.environ.get("SLIMFORGE_LOG", "").upper()
    logging.getLogger("slimforge").setLevel(
        logging.DEBUG if debug else getattr(logging, level) if level in ("INFO", "WARNING", "ERROR") else
        logging.WARNING)
    noisy = ("torchao", "sentence_transformers", "transformers", "torch", "nncf", "onnxruntime")
    for name in noisy:  # outside slimforge's calls (imports, loading) too
        logging.getLogger(name).setLevel(logging.NOTSET if debug else logging.ERROR)
    logging.getLogger().setLevel(logging.WARNING if debug else logging.ERROR)
    warnings.resetwarnings()
    if debug:
        if os.environ.get("TORCH_LOGS") == "-torch":
            del os.environ["TORCH_LOGS"]
    else:
        os.environ.setdefault("TORCH_LOGS", "-torch")  # torch sets its loggers' levels when imported (later, lazily)
        warnings.filterwarnings("ignore")


def _fail(message: str, code: int) -> None:
    """One plain line on stderr (never rich markup: paths such as ``[/x]`` stay as they are), then exit."""
    sys.stdout.flush()
    message = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(143 if TERMINATION["requested"] else code)  # a failure after a swallowed SIGTERM is still a SIGTERM


def _on_sigterm(*_: object) -> None:
    """SIGTERM: exit 143 through the exit handlers (the scratch space is removed, half-written outputs undone)."""
    TERMINATION["requested"] = True
    sys.exit(143)


def main() -> None:
    """Entry point: usage errors print the usage line and exit 2; user errors print one clear line and exit 2;
    anything unexpected prints one line and exits 1 (``--debug`` or ``SLIMFORGE_DEBUG=1`` shows the traceback)."""
    import os
    import signal

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # our own bars only
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _DEBUG["on"] = os.environ.get("SLIMFORGE_DEBUG", "") not in ("", "0")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _configure_logging(_DEBUG["on"] or os.environ.get("SLIMFORGE_LOG", "").lower() == "debug")
    signal.signal(signal.SIGTERM, _on_sigterm)
    import tempfile

    from slimforge.core.outputs import describe_os_error
    from slimforge.core.scratch import handle_termination_on_the_thread_stack, sweep

    handle_termination_on_the_thread_stack(signal.SIGTERM, signal.SIGINT)  # (OpenVINO can leave a stale stack)

    sweep(Path(tempfile.gettempdir()))  # scratch space of runs that were killed

    try:
        app(standalone_mode=True)  # typer prints usage errors (usage line, exit 2) itself
    except SystemExit as exc:
        if TERMINATION["requested"] and exc.code != 143:  # third-party code swallowed the SIGTERM's exit
            sys.exit(143)
        raise
    except SlimforgeError as exc:
        _fail(str(exc), 2)
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except OSError as exc:
        if _DEBUG["on"]:
            raise
        _fail(describe_os_error(exc), 2)
    except MemoryError:
        _fail("out of memory; try smaller batch sizes, fewer samples or a machine with more memory", 1)
    except Exception as exc:  # noqa: BLE001 - a bug of ours: one line, the traceback only on request
        if _DEBUG["on"]:
            raise
        first = (str(exc).splitlines() or [""])[0][:300]
        _fail(f"unexpected {type(exc).__name__}: {first} (rerun with --debug for the traceback, and please "
              "report it)", 1)
