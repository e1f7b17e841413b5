"""CLI command ``nas``: architecture search under measured constraints (registered on the main app)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from slimforge.cli.app import app
from slimforge.cli.common import (Arch, ArchKwargs, Force, InputShape, ModelArg, Weights, load_model,
                                  parse_duration)
from slimforge.cli.progress import progress_bars
from slimforge.cli.render import console, err_console


@app.command()
def nas(model: ModelArg = None,
        data: Annotated[Optional[Path], typer.Option(help="The model's inputs: a text file, .npz, an image folder, "
                                                          "CSV (labelled for mobilenet_v3).")] = None,
        space: Annotated[str, typer.Option(help="subnet: sub-networks of your own model, scored without training "
                                                "(a transformer encoder's layers, heads and FFN neurons, by cosine; a "
                                                "CNN's channels per stage, by accuracy on labelled data, else "
                                                "cosine); mobilenet_v3: an elastic MobileNetV3-style family trained "
                                                "on labelled data; auto: subnet for encoders.")] = "auto",
        max_latency_ms: Annotated[str, typer.Option(help="Latency budget at --batch: milliseconds, or a share of "
                                                         "the model's measured latency (50%).")] = "50%",
        batch: Annotated[int, typer.Option(help="Batch size the latency budget applies to.")] = 64,
        max_size_mb: Annotated[Optional[float], typer.Option(help="Model size budget (FP32 weights).")] = None,
        max_params: Annotated[Optional[int], typer.Option(help="Parameter budget.")] = None,
        min_accuracy: Annotated[Optional[float], typer.Option(help="Validation accuracy floor (0-1).")] = None,
        min_cosine: Annotated[Optional[float], typer.Option(help="subnet: cosine floor to the model's outputs.")]
        = None,
        distill_epochs: Annotated[int, typer.Option(help="subnet: distil the best finalists from the model for this "
                                                         "many epochs (GPU when there is one); the best after "
                                                         "training is chosen.")] = 0,
        distill_top: Annotated[int, typer.Option(help="subnet: how many finalists measured within budget are "
                                                      "distilled.")] = 3,
        trials: Annotated[int, typer.Option(help="Architectures trained (those predicted over a budget are not).")]
        = 30,
        time_budget: Annotated[Optional[str], typer.Option(help="Time for the trials: 600, 90s, 15m, 1h.")] = None,
        epochs: Annotated[int, typer.Option(help="Training epochs per trial (finalists get twice as many).")] = 15,
        threads: Annotated[int, typer.Option(help="Intra-op threads the latency is measured with.")] = 1,
        output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Where the results and model go.")]
        = Path("slimforge-out/nas"),
        input_shape: InputShape = None, arch: Arch = None, weights: Weights = None, arch_kwargs: ArchKwargs = None,
        force: Force = False) -> None:
    """Architecture search: the most accurate model of the space that meets the budgets, each measured on this
    machine; writes nas.json, nas_trials.csv, the Pareto plot nas_pareto.png and the chosen model nas-best.pt2."""
    from slimforge.errors import ConfigError
    from slimforge.nas.run import search_architecture

    if data is None:
        raise ConfigError("nas scores each candidate on your data: give it with --data (a text file, .npz, an image "
                          "folder, CSV; labelled for mobilenet_v3)")
    art = load_model(model, input_shape, arch=arch, weights=weights, arch_kwargs=arch_kwargs)
    budget_s = None if time_budget is None else parse_duration(time_budget)
    with progress_bars(err_console) as on_progress:
        res = search_architecture(art, data, space=space, max_latency_ms=max_latency_ms, batch=batch,
                                  max_size_mb=max_size_mb, max_params=max_params, min_accuracy=min_accuracy,
                                  min_cosine=min_cosine, distill_epochs=distill_epochs, distill_top=distill_top,
                                  trials=trials,
                                  time_budget_s=budget_s, epochs=epochs, threads=threads,
                                  output_dir=output_dir, force=force, progress=on_progress)
    doc = res.to_dict()
    say = lambda text: console.print(text, highlight=False, markup=False)  # noqa: E731
    c, base, pred = doc["constraints"], doc["baseline"], doc["predictor"]
    trained = sum(t["val_accuracy"] is not None for t in doc["trials"])
    verb = "scored" if doc["space"] == "subnet" else "trained"
    say(f"{len(doc['trials'])} architectures tried ({trained} {verb}, the rest predicted over a budget) in "
        f"{doc['seconds']:.0f} s; latency budget {c['max_latency_ms']:.3g} ms at batch {c['batch']}"
        if c["max_latency_ms"] else f"{len(doc['trials'])} architectures tried in {doc['seconds']:.0f} s")
    accuracy = doc.get("metric") == "accuracy"
    metric = "accuracy" if accuracy else "cosine to the model"
    if base and base.get("latency_ms") is not None:
        say(f"baseline: {base['latency_ms']:.3f} ms" + (f", held-out accuracy {100 * base['test_accuracy']:.2f}%"
                                                       if accuracy else ""))
    ch = doc["chosen"]
    if ch is None:
        err_console.print("no architecture met the constraints" + (": " + "; ".join(doc["notes"]) if doc["notes"]
                                                                   else ""), highlight=False, markup=False)
    else:
        drop = doc["accuracy_drop_points"]
        side = "" if drop is None else f", {abs(drop):.2f} points {'below' if drop > 0 else 'above'} the baseline"
        say(f"chosen: {ch['arch']} ({ch['params']} parameters): {ch['measured_ms']:.3f} ms measured "
            f"({ch['predicted_ms']:.3f} predicted), held-out {metric} {100 * ch['test_accuracy']:.2f}%"
            f"{side if accuracy else ''}")
    if doc.get("distilled"):
        held = doc["distilled"].get("heldout", {})
        before, after = held.get("cosine_to_teacher_before", float("nan")), held.get("cosine_to_teacher", float("nan"))
        say(f"distilled ({doc['distilled'].get('heldout_examples')} held-out inputs): cosine to the model "
            f"{before:.4f} -> {after:.4f}")
    if pred.get("median_abs_error") is not None:
        say(f"latency predictor: median error {100 * pred['median_abs_error']:.1f}% on the finalists "
            f"({pred['layers_timed']} layers timed)")
    say("written: " + ", ".join(str(p) for p in res.paths.values()))
    if ch is None:
        raise typer.Exit(1)
