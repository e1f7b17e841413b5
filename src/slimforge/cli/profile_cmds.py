"""CLI command ``profile``: where the time goes, layer by layer (registered on the main app)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from slimforge.cli.app import app
from slimforge.cli.common import Arch, ArchKwargs, Force, InputShape, ModelArg, Weights, load_model
from slimforge.cli.render import console


@app.command()
def profile(model: ModelArg = None,
            runtime: Annotated[Optional[str], typer.Option(
                help="torch | onnxruntime | openvino (a torch model is exported for the last two).")] = None,
            device: Annotated[str, typer.Option(help="cpu | cuda")] = "cpu",
            batch: Annotated[int, typer.Option(help="Batch size.")] = 1,
            data: Annotated[Optional[Path], typer.Option(help="Data to build the inputs from.")] = None,
            runs: Annotated[int, typer.Option(help="Profiled runs (after warm-up).")] = 20,
            threads: Annotated[Optional[int], typer.Option(help="Intra-op threads.")] = None,
            top: Annotated[int, typer.Option(help="Layers shown in the table.")] = 15,
            output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Where JSON, CSV, HTML and plots go.")
                                  ] = Path("slimforge-out/profile"),
            input_shape: InputShape = None, arch: Arch = None, weights: Weights = None, arch_kwargs: ArchKwargs = None,
            force: Force = False) -> None:
    """Per-layer profile: self time (ms, %), calls, FLOPs, parameters, activation memory, arithmetic intensity and
    GFLOP/s per layer (module, or ONNX / OpenVINO nodes grouped by source module), the bottlenecks over 5%, a bar
    chart and a roofline plot."""
    from slimforge.api import profile as api_profile

    art = load_model(model, input_shape, arch=arch, weights=weights, arch_kwargs=arch_kwargs)
    res = api_profile(art, runtime=runtime, device=device, batch=batch, data=data, runs=runs, threads=threads,
                      output_dir=output_dir, force=force)
    say = lambda text: console.print(text, highlight=False, markup=False)  # noqa: E731
    say(f"{res.model} on {res.runtime} ({res.device}), batch {res.batch}")
    say(res.table(top))
    hot = res.bottlenecks(0.05)
    say("bottlenecks (layers over 5% of the time): " + (", ".join(f"{x.name} {100 * x.pct:.1f}%" for x in hot)
                                                        or "none"))
    blocks = res.by_module(res.block_depth())
    say("by block: " + ", ".join(f"{x.name} {100 * x.pct:.1f}%" for x in blocks[:12]))
    say(f"written: {output_dir}/profile.html, profile.json, profile.csv, profile_layers.png, roofline.png")
