"""Typer app: every command builds a recipe or request and calls the API; ``--dry-run`` prints the recipe."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from slimforge.cli.render import console, err_console, print_checks, print_comparison, print_search
from slimforge.errors import ConfigError, SlimforgeError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Make trained models smaller and faster, verified and measured on your hardware.")


ModelArg = Annotated[Optional[str], typer.Argument(help="Model: ONNX file, HF folder, TorchScript .pt, .pt2, "
                                                        "OpenVINO .xml. Default: the bundled all-MiniLM-L6-v2.")]
Force = Annotated[bool, typer.Option(
    "--force", help="Write into an output folder that holds other files (slimforge replaces only what it wrote "
                    "there; other files are never touched).")]
InputShape = Annotated[Optional[list[str]], typer.Option("--input-shape", help="NAME:1x3x224x224 (repeatable)")]


def _batches(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError:
        raise ConfigError(f"--batch must be a comma-separated list of integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ConfigError(f"--batch values must be positive, got {text!r}")
    return values


def _load(model: str | None, input_shape: list[str] | None) -> Any:
    from slimforge.io.models import default_model_path, load
    from slimforge.io.synth import parse_input_shapes

    return load(model or default_model_path(), input_shapes=parse_input_shapes(input_shape) or None)


@app.command()
def info(model: ModelArg = None, input_shape: InputShape = None,
         as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Show inputs, outputs, op histogram, parameter count and size."""
    from slimforge.convert.info import model_info

    data = model_info(_load(model, input_shape))
    if as_json:
        console.print_json(json.dumps(data, default=str))
        return
    table = Table(title=f"{data['name']} ({data['format']})", show_header=False)
    for key in ("path", "task", "producer", "opset", "parameters", "flops_per_example_batch", "size_mb",
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
           dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the recipe and stop.")] = False) -> None:
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

    art = _load(model, input_shape)
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
              input_shape: InputShape = None,
              json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write results as JSON.")] = None
              ) -> None:
    """Measure latency p50/p95/p99, throughput, peak memory and size."""
    from slimforge.api import benchmark as api_benchmark
    from slimforge.bench.timing import BenchSpec
    from slimforge.cli.progress import progress_bars

    batches = _batches(batch)
    arts = [_load(m, input_shape) for m in (models or [None])]
    if json_out:
        from slimforge.core.outputs import prepare_output_file

        json_out = prepare_output_file(json_out, inputs=[a.path for a in arts])
    with progress_bars(err_console) as progress:
        results = api_benchmark(arts, runtime=runtime, batch_sizes=batches, data=data, threads=threads,
                                spec=BenchSpec(repeats=repeats), progress=progress)
    table = Table(title="benchmark")
    for col in ("model", "runtime", "batch", "p50 ms", "p95 ms", "p99 ms", "items/s", "peak MB", "size MB"):
        table.add_column(col, justify="right" if col not in ("model", "runtime") else "left")
    for r in results:
        for b, t in r.latency_ms.items():
            table.add_row(r.name, r.runtime, str(b), f"{t.p50:.2f}", f"{t.p95:.2f}", f"{t.p99:.2f}",
                          f"{r.throughput[b]:.1f}", f"{r.peak_memory_mb:.1f}", f"{r.size_mb:.1f}")
    console.print(table)
    if json_out:
        from slimforge.core.outputs import write_text

        write_text(json_out, json.dumps([r.to_dict() for r in results], indent=2))


@app.command()
def optimize(model: ModelArg = None,
             output_dir: Annotated[Path, typer.Option("-o", "--output-dir", help="Output folder.")] = Path(
                 "slimforge-out"),
             data: Annotated[Optional[Path], typer.Option(help="Calibration/evaluation (and training) data.")] = None,
             target: Annotated[Optional[str], typer.Option(
                 help="Search for the best artifact on cpu | server | edge | mobile | gpu | PRESET.yaml. Without "
                      "it (and without goals) the fixed recipe runs: export, graph passes, dynamic INT8.")] = None,
             max_latency_ms: Annotated[Optional[str], typer.Option(
                 help="Latency goal at the first --batch: ms, or N% of the baseline.")] = None,
             latency_stat: Annotated[str, typer.Option(help="p50 | p95 | p99 for the latency goal.")] = "p50",
             max_memory_mb: Annotated[Optional[str], typer.Option(help="Peak memory goal: MB or N%.")] = None,
             max_size_mb: Annotated[Optional[str], typer.Option(help="Size on disk goal: MB or N%.")] = None,
             min_accuracy: Annotated[Optional[float], typer.Option(help="Accuracy goal, % (labelled data).")] = None,
             max_accuracy_drop: Annotated[Optional[str], typer.Option(
                 help="Quality budget: points (or cosine units without labels), or N% of the baseline.")] = None,
             min_cosine: Annotated[Optional[float], typer.Option(help="Output cosine to the baseline.")] = None,
             min_speedup: Annotated[Optional[float], typer.Option(help="Speedup over the baseline.")] = None,
             time_budget: Annotated[str, typer.Option(help="Search time budget: 900, 90s, 15m, 1h.")] = "15m",
             cache: Annotated[bool, typer.Option(help="Reuse cached steps, measurements and results.")] = True,
             batch: Annotated[Optional[str], typer.Option(
                 help="Batch sizes to measure (the first is the latency goal's). Default: the target's.")] = None,
             threads: Annotated[Optional[int], typer.Option(help="Intra-op threads.")] = None,
             recipe: Annotated[Optional[Path], typer.Option(help="A recipe YAML to run instead of the default.")] = None,
             input_shape: InputShape = None, force: Force = False,
             dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the recipe and stop.")] = False) -> None:
    """Optimize a model. With --target or any goal: search every technique and runtime for the best artifact that
    meets the goals (exit code 0 when all are met, 3 when not; the best effort is saved either way)."""
    from slimforge.plan.recipe import Recipe, default_recipe

    goal_args = {"max_latency_ms": max_latency_ms, "max_memory_mb": max_memory_mb, "max_size_mb": max_size_mb,
                 "min_accuracy": min_accuracy, "max_accuracy_drop": max_accuracy_drop, "min_cosine": min_cosine,
                 "min_speedup": min_speedup}
    goal_args = {k: v for k, v in goal_args.items() if v is not None}
    art = _load(model, input_shape)
    if target is not None or goal_args:
        _auto(art, target or "cpu", goal_args, latency_stat, batch, threads, data, output_dir,
              _duration(time_budget), cache, dry_run, force)
        return
    the_recipe = Recipe.load(recipe) if recipe else default_recipe(art, batch_sizes=_batches(batch or "1,32"),
                                                                    threads=threads)
    if dry_run:
        console.print(the_recipe.to_yaml())
        return
    from slimforge.api import optimize as api_optimize
    from slimforge.cli.progress import progress_bars

    with progress_bars(err_console) as progress:
        res = api_optimize(art, data=data, output_dir=output_dir, recipe=the_recipe, progress=progress,
                           force=force)
    print_checks(res.artifact)
    print_comparison(res.report)
    console.print(f"artifact: {res.paths['artifact']}")
    console.print(f"report:   {res.paths['html']}  (also report.json, report.csv, *.png)")


def _duration(text: str) -> float:
    import re

    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(s|m|min|h)?\s*", text)
    if not m:
        raise ConfigError(f"--time-budget: cannot read {text!r}; write e.g. 90s, 15m or 1h")
    return float(m.group(1)) * {"s": 1, None: 1, "m": 60, "min": 60, "h": 3600}[m.group(2)]


def _auto(art: Any, target: str, goal_args: dict[str, Any], latency_stat: str, batch: str | None,
          threads: int | None, data: Path | None, output_dir: Path, budget_s: float, cache: bool, dry_run: bool,
          force: bool) -> None:
    import dataclasses

    from slimforge.auto import Goals, auto_optimize, get_target
    from slimforge.cli.progress import progress_bars

    tgt = get_target(target)
    if batch is not None:
        batches = _batches(batch)
        tgt = dataclasses.replace(tgt, batch_sizes=batches)
        goal_args["batch"] = batches[0]
    if threads is not None:
        tgt = dataclasses.replace(tgt, threads=threads)
    goals = Goals.from_mapping({**goal_args, "latency_stat": latency_stat})
    if dry_run:
        console.print_json(json.dumps({"target": tgt.to_dict(), "goals": goals.merged(tgt.goals).to_dict(),
                                       "time_budget_s": budget_s}))
        return
    with progress_bars(err_console) as progress:
        res = auto_optimize(art, target=tgt, goals=goals, data=data, output_dir=output_dir, time_budget_s=budget_s,
                            progress=progress, use_cache=cache, force=force)
    print_search(res.report, from_cache=res.from_cache)
    if "artifact" in res.paths:
        console.print(f"artifact: {res.paths['artifact']}")
    console.print(f"recipe:   {res.paths.get('recipe')}  (re-run: slimforge run {res.paths.get('recipe')})")
    console.print(f"report:   {res.paths.get('html')}  (also search.json, search.csv, pareto.png)")
    if not res.goals_met:
        err_console.print("goals not met: " + "; ".join(res.missed))
        raise typer.Exit(3)


@app.command()
def run(recipe: Annotated[Path, typer.Argument(help="A recipe YAML (e.g. the recipe.yaml that optimize wrote).")],
        model: Annotated[Optional[str], typer.Argument(help="Model (default: the recipe's source).")] = None,
        output_dir: Annotated[Path, typer.Option("-o", "--output-dir", help="Output folder.")] = Path(
            "slimforge-out/run"),
        data: Annotated[Optional[Path], typer.Option(help="Calibration/evaluation data.")] = None,
        force: Force = False) -> None:
    """Re-run a recipe: its steps, then the benchmark and report of baseline vs result."""
    from slimforge.api import optimize as api_optimize
    from slimforge.cli.progress import progress_bars
    from slimforge.plan.recipe import Recipe

    the_recipe = Recipe.load(recipe)
    source = model or the_recipe.source
    if source is None:
        raise ConfigError(f"{recipe}: the recipe names no source model; give one: slimforge run {recipe} MODEL")
    if not the_recipe.steps:
        raise ConfigError(f"{recipe}: the recipe has no steps (its search found no gain on its target)")
    art = _load(source, None)
    dataset: Any = data
    if dataset is None and the_recipe.data == "synthesized":  # the search calibrated on synthesised inputs
        from slimforge.auto.search import _Synthetic

        dataset = _Synthetic(art, n=64, seed=1)
    elif dataset is None and the_recipe.data:
        dataset = Path(the_recipe.data)
    with progress_bars(err_console) as progress:
        res = api_optimize(art, data=dataset, output_dir=output_dir, recipe=the_recipe, progress=progress,
                           force=force)
    print_checks(res.artifact)
    print_comparison(res.report)
    console.print(f"artifact: {res.paths['artifact']}")


@app.command()
def quantize(model: ModelArg = None,
             method: Annotated[str, typer.Option(
                 help="dynamic | static | fp16 | bf16 | int4 | int8-weight | fp8 (GPU) | qat (PyTorch)")] = "dynamic",
             calibration: Annotated[str, typer.Option(help="minmax | entropy | percentile (static)")] = "minmax",
             per_channel: Annotated[bool, typer.Option(help="Per-channel weight scales.")] = True,
             runtime: Annotated[Optional[str], typer.Option(
                 help="torch | torch_compile | onnxruntime | openvino")] = None,
             data: Annotated[Optional[Path], typer.Option(help="Calibration data (static needs it).")] = None,
             output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Output file.")] = None,
             num_samples: Annotated[int, typer.Option(help="Calibration samples.")] = 128,
             exclude: Annotated[Optional[list[str]], typer.Option(help="Node/layer names kept in float.")] = None,
             min_cosine: Annotated[Optional[float], typer.Option(
                 help="Fidelity floor: output cosine to FP32 below which the step fails.")] = None,
             max_drop: Annotated[Optional[str], typer.Option(
                 help="Quality budget (accuracy points, e.g. 0.5 or 0.5%; or cosine drop): keeps the fewest "
                      "layers in float that meet it.")] = None,
             batch: Annotated[str, typer.Option(help="Batch sizes for the speed check.")] = "1,32",
             input_shape: InputShape = None,
             dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the recipe and stop.")] = False) -> None:
    """Quantize with one method for one runtime; verified, and checked against its FP32 input for speed."""
    from slimforge.plan.recipe import Recipe
    from slimforge.techniques.quantize.methods import Method, default_runtime_for, quantize_steps

    art = _load(model, input_shape)
    chosen = Method.parse(method)
    rt = runtime or default_runtime_for(art, chosen)
    steps = quantize_steps(art, chosen, runtime=rt, calibration=calibration, per_channel=per_channel,
                           num_samples=num_samples, exclude=tuple(exclude or ()), min_cosine=min_cosine,
                           max_drop=_drop(max_drop))
    if dry_run:
        console.print(Recipe(steps=tuple(steps), runtime=rt, batch_sizes=_batches(batch)).to_yaml())
        return
    from slimforge.api import quantize as api_quantize
    from slimforge.cli.progress import progress_bars

    torch_rt = rt in ("torch", "torch_compile")
    suffix = ".pt" if torch_rt else ".xml" if rt == "openvino" else ".onnx"
    final_path = output or Path("slimforge-out") / f"{art.name}-{chosen.value}{suffix}"
    from slimforge.core.outputs import prepare_output_file

    final_path = prepare_output_file(final_path, inputs=[art.path])  # refuse before any work
    out_path = None if torch_rt else final_path  # PyTorch results live in memory until saved below
    with progress_bars(err_console) as progress:
        q = api_quantize(art, chosen.value, calibration=calibration, per_channel=per_channel, data=data, runtime=rt,
                         output=out_path, num_samples=num_samples, exclude=tuple(exclude or ()),
                         min_cosine=min_cosine, max_drop=_drop(max_drop),
                         batch_sizes=_batches(batch), progress=progress)
    print_checks(q)
    if q.meta.get("float_layers") is not None:
        layers = q.meta["float_layers"]
        console.print(f"kept in float ({len(layers)}): {', '.join(layers) or 'none'}", soft_wrap=True)
    speed = next((c for c in q.step_checks if c.name == "no_slowdown"), None)
    if speed is not None and not speed.passed:
        console.print(f"warning: {speed.detail}; the auto-optimizer will not pick it",
                      soft_wrap=True)
    elif speed is not None:
        console.print(speed.detail, soft_wrap=True)
    if torch_rt:
        from slimforge.io.save import save

        q = save(q, final_path)  # TorchScript, reloads with identical outputs
    console.print(f"wrote {q.path}  ({q.size_bytes() / 1e6:.2f} MB, was {art.size_bytes() / 1e6:.2f} MB)")


def _drop(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text.strip().rstrip("%"))
    except ValueError:
        raise ConfigError(f"--max-drop must be a number such as 0.5 or 0.5%, got {text!r}") from None


def _enum(name: str, value: str) -> Any:
    from slimforge.convert.onnx import Exporter

    try:
        return Exporter(value)
    except ValueError:
        raise ConfigError(f"--{name} must be one of {[e.value for e in Exporter]}, got {value!r}") from None


_DEBUG = {"on": False}


@app.callback()
def _options(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of unexpected errors.")] = False
             ) -> None:
    """Make trained models smaller and faster, verified and measured on your hardware."""
    _DEBUG["on"] = debug or _DEBUG["on"]


def _fail(message: str, code: int) -> None:
    """One plain line on stderr (never rich markup: paths such as ``[/x]`` stay as they are), then exit."""
    sys.stdout.flush()
    message = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


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
    for noisy in ("torchao", "root", "sentence_transformers", "transformers", "torch"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    import warnings

    warnings.filterwarnings("ignore")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the exit handlers: scratch space is removed
    import tempfile

    from slimforge.core.outputs import describe_os_error
    from slimforge.core.scratch import sweep

    sweep(Path(tempfile.gettempdir()))  # scratch space of runs that were killed

    try:
        app(standalone_mode=True)  # typer prints usage errors (usage line, exit 2) itself
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
