"""CLI commands for prune, distill, lowrank and fuse (registered on the main app)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from slimforge.cli.app import app
from slimforge.cli.common import Arch, ArchKwargs, InputShape, ModelArg, Weights, load_model, parse_batches
from slimforge.cli.render import console, err_console, print_checks

Output = Annotated[Optional[Path], typer.Option(
    "-o", "--output", help="Where to save the result: a .pt2 (torch.export; every command loads it and can edit it "
                           "again), or a .pt (TorchScript: runtimes run it, techniques cannot edit it).")]
Batch = Annotated[str, typer.Option(help="Batch sizes for the speed check.")]
# distill's teacher and student each come as a path, or as a state dict with its class (--ROLE-arch ...)


def _role_options(role: str) -> tuple[Any, Any, Any]:
    return (Annotated[Optional[str], typer.Option(
                f"--{role}-arch", help=f"package.module:Class of the {role} whose state dict --{role} (or "
                                       f"--{role}-weights) holds.")],
            Annotated[Optional[Path], typer.Option(f"--{role}-weights",
                                                   help=f"The {role}'s state dict, for --{role}-arch.")],
            Annotated[Optional[str], typer.Option(f"--{role}-arch-kwargs",
                                                  help=f"JSON keyword arguments for --{role}-arch.")])


TeacherArch, TeacherWeights, TeacherKwargs = _role_options("teacher")
StudentArch, StudentWeights, StudentKwargs = _role_options("student")


def _output(given: Path | None, art: Any, what: str) -> Path:
    """The output file, checked before any work (never an existing folder, the input or a file of the user's)."""
    from slimforge.core.outputs import prepare_output_file

    return prepare_output_file(given or Path("slimforge-out") / f"{art.name}-{what}.pt2", inputs=[art.path])


def _report(before: Any, after: Any, out: Path) -> None:
    from slimforge.io.save import save

    print_checks(after)
    table = Table(title=f"{before.name}: before vs after")
    for col in ("", "before", "after"):
        table.add_column(col, justify="left" if not col else "right")
    # this step's own figures (a reloaded model's metadata still holds those of the steps that made it)
    m = next((c.metrics for c in after.step_checks if "parameters_before" in c.metrics), {})
    if m:
        table.add_row("parameters", f"{int(m['parameters_before']):,}", f"{int(m['parameters_after']):,}")
    if m.get("flops_before"):
        table.add_row("FLOPs (example batch)", f"{int(m['flops_before']):,}", f"{int(m['flops_after']):,}")
    speed = next((c for c in after.step_checks if c.name == "no_slowdown"), None)
    if speed is not None:
        for key, value in speed.metrics.items():
            if key.startswith("p50_ms_b"):
                b = key.removeprefix("p50_ms_b")
                table.add_row(f"p50 ms, batch {b}", f"{speed.metrics[f'reference_p50_ms_b{b}']:.3f}", f"{value:.3f}")
    console.print(table)
    if speed is not None and not speed.passed:
        console.print(f"warning: {speed.detail}", soft_wrap=True)
    saved = save(after, out)
    console.print(f"wrote {saved.path}" + ("  (TorchScript: runtimes run it, but prune, fuse, lowrank and distill "
                                           "cannot edit it; save as .pt2 to go on editing)"
                                           if saved.format.value == "torchscript" else ""), soft_wrap=True)


@app.command()
def prune(model: ModelArg = None,
          ratio: Annotated[float, typer.Option(help="Share of channels/heads/neurons (or weights) to remove.")] = 0.5,
          structured: Annotated[bool, typer.Option(help="Remove whole channels (physically smaller).")] = True,
          criterion: Annotated[str, typer.Option(
              help="l1 | l2 | taylor | random | lsq (data-driven: heads the refit can best spare)")] = "l1",
          global_pruning: Annotated[bool, typer.Option("--global", help="One ranking across layers.")] = False,
          round_to: Annotated[int, typer.Option(help="Keep channel counts a multiple of this.")] = 8,
          iterative: Annotated[int, typer.Option(help="Prune in this many steps, fine-tuning after each.")] = 1,
          finetune_data: Annotated[Optional[Path], typer.Option(
              help="Data for least-squares reconstruction, fine-tuning and Taylor.")] = None,
          finetune_epochs: Annotated[int, typer.Option(help="Fine-tuning epochs per step.")] = 0,
          reconstruct: Annotated[bool, typer.Option(
              help="With data: refit the layers that read pruned features by least squares.")] = True,
          output: Output = None, batch: Batch = "1,32", input_shape: InputShape = None, arch: Arch = None,
          weights: Weights = None, arch_kwargs: ArchKwargs = None) -> None:
    """Prune a PyTorch model (structured: fewer channels, heads and FFN neurons; or unstructured sparsity)."""
    from slimforge.cli.progress import progress_bars
    from slimforge.compress import prune as api_prune
    from slimforge.techniques.prune.torch_prune import PruneConfig

    art = load_model(model, input_shape, arch=arch, weights=weights, arch_kwargs=arch_kwargs, edits="prune")
    target = _output(output, art, "pruned")
    with progress_bars(err_console) as progress:
        out = api_prune(art, PruneConfig(ratio=ratio, structured=structured, criterion=criterion,
                                         global_pruning=global_pruning, round_to=round_to, iterative_steps=iterative,
                                         finetune_epochs=finetune_epochs, reconstruct=reconstruct),
                        data=finetune_data, batch_sizes=parse_batches(batch), progress=progress)
    _report(art, out, target)


@app.command()
def distill(teacher: Annotated[Optional[str], typer.Option(help="Teacher model (default: bundled MiniLM).")] = None,
            student: Annotated[Optional[str], typer.Option(
                help="Student: a model path, or layers:N to keep N of the teacher's blocks.")] = None,
            data: Annotated[Path, typer.Option(help="Training data.")] = ...,
            temperature: Annotated[float, typer.Option(help="Softmax temperature (logits).")] = 4.0,
            alpha: Annotated[float, typer.Option(help="Weight of the distillation term vs the task loss.")] = 0.7,
            epochs: Annotated[int, typer.Option(help="Epochs.")] = 10,
            lr: Annotated[float, typer.Option(help="Learning rate.")] = 1e-3,
            mode: Annotated[str, typer.Option(help="auto | logits | embedding-mse | embedding-cosine")] = "auto",
            hidden_layers: Annotated[Optional[list[str]], typer.Option(
                "--hidden", help="Module-name globs whose outputs the student also matches (repeatable).")] = None,
            freeze: Annotated[Optional[list[str]], typer.Option(
                help="Student module-name globs kept fixed, e.g. '*embeddings*' (repeatable).")] = None,
            augment: Annotated[int, typer.Option(help="Token-level variants per training sentence.")] = 0,
            device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
            output: Output = None, batch: Batch = "1,32", input_shape: InputShape = None,
            teacher_arch: TeacherArch = None, teacher_weights: TeacherWeights = None,
            teacher_arch_kwargs: TeacherKwargs = None, student_arch: StudentArch = None,
            student_weights: StudentWeights = None, student_arch_kwargs: StudentKwargs = None) -> None:
    """Distil a teacher into a smaller student; prints the held-out curve per epoch. Each model is a path (a
    Hugging Face folder, a .pt2, ...) or a state dict with its class: --teacher-arch/--teacher-weights and
    --student-arch/--student-weights."""
    from slimforge.cli.progress import progress_bars
    from slimforge.compress import distill as api_distill
    from slimforge.techniques.distill.torch_distill import DistillConfig

    cfg = DistillConfig(mode=mode, temperature=temperature, alpha=alpha, epochs=epochs, lr=lr,
                        hidden_layers=tuple(hidden_layers or ()), freeze=tuple(freeze or ()), augment=augment,
                        device=device)
    t = load_model(teacher, input_shape, arch=teacher_arch, weights=teacher_weights, arch_kwargs=teacher_arch_kwargs,
                   what="--teacher")
    target = _output(output, t, "distilled")
    s: Any = None
    if student and student.startswith("layers:"):
        s = int(student.split(":", 1)[1])
    elif student or student_weights or student_arch:
        s = load_model(student, input_shape, arch=student_arch, weights=student_weights,
                       arch_kwargs=student_arch_kwargs, edits="distill", what="--student")
    with progress_bars(err_console) as progress:
        out = api_distill(t, s, cfg, data=data, batch_sizes=parse_batches(batch), progress=progress)
    info = out.meta["distill"]
    console.print("held-out " + info["metric"] + " by epoch: " +
                  ", ".join(f"{row['epoch']}: {row[info['metric']]:.4f}" for row in info["curve"]), soft_wrap=True)
    _report(t, out, target)


@app.command()
def lowrank(model: ModelArg = None,
            ratio: Annotated[Optional[float], typer.Option(help="Rank as a share of full rank.")] = None,
            energy: Annotated[Optional[float], typer.Option(help="Or: spectral energy to keep, e.g. 0.9.")] = None,
            layers: Annotated[Optional[list[str]], typer.Option(help="Module-name globs (repeatable).")] = None,
            output: Output = None, batch: Batch = "1,32", input_shape: InputShape = None, arch: Arch = None,
            weights: Weights = None, arch_kwargs: ArchKwargs = None) -> None:
    """Factorize Linear/Conv layers by truncated SVD."""
    from slimforge.compress import lowrank as api_lowrank
    from slimforge.techniques.lowrank import LowRankConfig

    cfg = LowRankConfig(ratio=ratio if ratio is not None or energy is not None else 0.5, energy=energy,
                        layers=tuple(layers or ("*",)))
    art = load_model(model, input_shape, arch=arch, weights=weights, arch_kwargs=arch_kwargs, edits="lowrank")
    target = _output(output, art, "lowrank")
    out = api_lowrank(art, cfg, batch_sizes=parse_batches(batch))
    _report(art, out, target)


@app.command()
def fuse(model: ModelArg = None, output: Output = None, batch: Batch = "1,32", input_shape: InputShape = None,
         arch: Arch = None, weights: Weights = None, arch_kwargs: ArchKwargs = None) -> None:
    """Fold BatchNorm into Conv/Linear (outputs verified to 1e-5)."""
    from slimforge.compress import fuse as api_fuse

    art = load_model(model, input_shape, arch=arch, weights=weights, arch_kwargs=arch_kwargs, edits="fuse")
    target = _output(output, art, "fused")
    out = api_fuse(art, batch_sizes=parse_batches(batch))
    _report(art, out, target)
