"""The compression commands: `prune`, `lowrank` and `depth`, each a new run from --checkpoint
into --out, or --resume of a stopped one (`_compression_run`, the path all three share)."""

from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from compresskit.cli.app import user_errors
from compresskit.cli.flags import COMPRESSION_FLAGS
from compresskit.cli.options import (
    AllocateName,
    BenchSeconds,
    Device,
    DeviceName,
    Distill,
    DistillTemperature,
    DistillWeight,
    Download,
    FinetuneBatchSize,
    FinetuneEpochs,
    FinetuneLabelSmoothing,
    FinetuneLr,
    FinetuneMomentum,
    FinetuneOptimizer,
    FinetuneSchedule,
    FinetuneWeightDecay,
    ImportanceName,
    OptimizerName,
    Overwrite,
    PrecisionName,
    PrecisionOption,
    Quiet,
    ResumeOut,
    RunDataDir,
    ScheduleName,
    ScopeName,
    Seed,
    Source,
    SyncBn,
    Teacher,
    Threads,
    TrustFactory,
    _number_list,
    _refuse_changes,
    _str_or_none,
)
from compresskit.cli.render import _print_report, _print_table, console
from compresskit.errors import CompresskitError

if TYPE_CHECKING:  # the jobs pull in torch; the command line imports them only when a command runs
    from compresskit.jobs import JobOptions
    from compresskit.progress import Progress
    from compresskit.train import TrainConfig

# The flags --resume accepts; any other one given explicitly is refused.
RESUME_ALLOWED = {"resume", "data_dir", "download", "quiet", "bench_seconds", "threads", "trust_factory"}

# The fine-tuning flags every compression command declares (annotations: cli.options), in --help's
# order: each parameter and the TrainConfig field it sets.
FINETUNE_FIELDS = {
    "finetune_epochs": "epochs", "batch_size": "batch_size", "lr": "lr", "optimizer": "optimizer",
    "momentum": "momentum", "weight_decay": "weight_decay", "schedule": "schedule",
    "label_smoothing": "label_smoothing", "seed": "seed", "device": "device", "precision": "precision",
    "sync_bn": "sync_bn",
}  # fmt: skip

# Starts a new run: (source checkpoint, --out, JobOptions, Progress) → the job's result.
StartRun = Callable[[Path, Path, "JobOptions", "Progress"], dict]


def _compression_run(ctx: typer.Context, command: str, start: StartRun, *, checkpoint: Path | None,
                     out: Path | None, resume: Path | None, options: "JobOptions", quiet: bool,
                     trust_factory: bool) -> tuple[dict, Path] | None:  # fmt: skip
    """Run `command` (prune, lowrank or depth): with --resume, continue that run with its own
    configuration (`resume_compress_run`; refused when any flag outside `RESUME_ALLOWED` is given),
    else `start` a new one from --checkpoint into --out. A `CompresskitError` ends the command as
    one line (`user_errors`). Returns the job's result and the run directory it wrote, or None in a
    torchrun process other than rank 0, which prints nothing."""
    from compresskit.jobs import resume_compress_run

    with user_errors(trust_factory, COMPRESSION_FLAGS[command]):
        if resume is not None:
            _refuse_changes(ctx, RESUME_ALLOWED, "--resume")
            result = resume_compress_run(
                resume, command, data_dir=options.data_dir, download=options.download,
                bench_seconds=options.bench_seconds, threads=options.threads, progress=_progress(quiet),
            )  # fmt: skip
            out = resume
        else:
            if checkpoint is None or out is None:
                raise CompresskitError(f"{command} needs --checkpoint RUN and --out DIR (or --resume OUT).")
            result = start(checkpoint, out, options, _progress(quiet))
    if _elsewhere():
        return None
    return result, out


def _progress(quiet: bool) -> "Progress":
    """Progress on stderr, from rank 0 only under torchrun."""
    from compresskit import distributed
    from compresskit.progress import Progress

    return Progress(enabled=not quiet and distributed.is_main())


def _elsewhere() -> bool:
    """Whether this is a torchrun process other than rank 0 (which prints nothing)."""
    from compresskit import distributed

    return not distributed.is_main()


def _job_options(data_dir: Path | None, download: bool, bench_seconds: float, threads: int | None,
                 overwrite: bool, distill: bool, teacher: Path | None, distill_temperature: float,
                 distill_weight: float) -> "JobOptions":  # fmt: skip
    """The `JobOptions` of the flags every compression command has."""
    from compresskit.jobs import JobOptions

    return JobOptions(
        data_dir=_str_or_none(data_dir), download=download, bench_seconds=bench_seconds, threads=threads,
        overwrite=overwrite, distill=distill, teacher=_str_or_none(teacher),
        distill_temperature=distill_temperature, distill_weight=distill_weight,
    )  # fmt: skip


def _finetune_config(ctx: typer.Context) -> "TrainConfig":
    """The fine-tuning `TrainConfig` of the command's `FINETUNE_FIELDS` flags, read from `ctx` so that
    prune, lowrank and depth build it alike (a fixed choice: its value)."""
    from compresskit.train import TrainConfig

    values = {field: ctx.params[name] for name, field in FINETUNE_FIELDS.items()}
    return TrainConfig(**{field: v.value if isinstance(v, Enum) else v for field, v in values.items()})


def prune(
    ctx: typer.Context,
    checkpoint: Source = None,
    out: Path | None = typer.Option(None, "--out", help="Run directory to create for the pruned model."),
    resume: ResumeOut = None,
    ratio: float = typer.Option(0.5, help="Fraction of each conv layer's channels to remove, in (0, 1)."),
    importance: ImportanceName = typer.Option("l1", help="How channels are ranked."),
    scope: ScopeName = typer.Option("uniform", help="One ratio per layer, or rank all channels together."),
    allocate: AllocateName = typer.Option("uniform", help="csi: per-layer ratios from CSI gains."),
    steps: int = typer.Option(
        1, help="Prune in this many steps, fine-tuning after each (--finetune-epochs split over them)."
    ),
    round_to: int | None = typer.Option(None, help="Keep channel counts a multiple of this."),
    max_layer_ratio: float = typer.Option(1.0, help="No layer loses more than this fraction."),
    layer_ratios: str | None = typer.Option(
        None, help="A comma list of one ratio per conv layer, in order, instead of one --ratio for all."
    ),
    calibration_samples: int = typer.Option(
        1000, help="Class-balanced training images for taylor, separation and --allocate csi."
    ),
    finetune_epochs: FinetuneEpochs = 10,
    batch_size: FinetuneBatchSize = 128,
    lr: FinetuneLr = 0.01,
    optimizer: FinetuneOptimizer = OptimizerName.sgd,
    momentum: FinetuneMomentum = 0.9,
    weight_decay: FinetuneWeightDecay = 5e-4,
    schedule: FinetuneSchedule = ScheduleName.cosine,
    label_smoothing: FinetuneLabelSmoothing = 0.0,
    seed: Seed = 0,
    device: Device = DeviceName.auto,
    precision: PrecisionOption = PrecisionName.auto,
    sync_bn: SyncBn = False,
    distill: Distill = False,
    distill_temperature: DistillTemperature = 4.0,
    distill_weight: DistillWeight = 0.9,
    teacher: Teacher = None,
    data_dir: RunDataDir = None,
    download: Download = True,
    bench_seconds: BenchSeconds = 1.0,
    threads: Threads = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    trust_factory: TrustFactory = False,
) -> None:
    """Remove whole channels (torch-pruning), fine-tune, and report the savings."""
    from compresskit.compress import PruneConfig
    from compresskit.jobs import prune_run

    def start(source: Path, out: Path, options: "JobOptions", progress: "Progress") -> dict:
        cfg = PruneConfig(
            ratio=ratio, importance=importance.value, scope=scope.value, allocate=allocate.value,
            steps=steps, round_to=round_to, max_layer_ratio=max_layer_ratio, seed=seed,
            layer_ratios=_number_list(layer_ratios, "--layer-ratios"),
        )  # fmt: skip
        return prune_run(
            source, out, cfg, _finetune_config(ctx), calibration_samples=calibration_samples, options=options,
            progress=progress,
        )  # fmt: skip

    done = _compression_run(
        ctx, "prune", start,
        checkpoint=checkpoint, out=out, resume=resume, quiet=quiet, trust_factory=trust_factory,
        options=_job_options(data_dir, download, bench_seconds, threads, overwrite, distill, teacher,
                             distill_temperature, distill_weight),
    )  # fmt: skip
    if done is None:
        return
    result, out = done
    _print_report(result["table"], f"pruned → {escape(str(out))}")
    _print_table(
        "pruning",
        [
            ("conv widths", str(result["conv_widths"]))
            if "conv_widths" in result
            else ("channels", str(result.get("channels"))),
            ("written", f"{out}/ (checkpoint.pt, pruned.pt, report.md, report.csv, widths.csv, curves.png)"),
        ],
    )


def lowrank(
    ctx: typer.Context,
    checkpoint: Source = None,
    out: Path | None = typer.Option(None, "--out", help="Run directory to create for the factorized model."),
    resume: ResumeOut = None,
    energy: float | None = typer.Option(None, help="Keep this fraction of Σσ² per layer, in (0, 1]."),
    rank_ratio: float | None = typer.Option(None, help="Rank = this fraction of full rank, in (0, 1]."),
    layers: str = typer.Option("all", help="all, or a comma list such as block5,block6,fc1."),
    finetune_epochs: FinetuneEpochs = 10,
    batch_size: FinetuneBatchSize = 128,
    lr: FinetuneLr = 0.01,
    optimizer: FinetuneOptimizer = OptimizerName.sgd,
    momentum: FinetuneMomentum = 0.9,
    weight_decay: FinetuneWeightDecay = 5e-4,
    schedule: FinetuneSchedule = ScheduleName.cosine,
    label_smoothing: FinetuneLabelSmoothing = 0.0,
    seed: Seed = 0,
    device: Device = DeviceName.auto,
    precision: PrecisionOption = PrecisionName.auto,
    sync_bn: SyncBn = False,
    distill: Distill = False,
    distill_temperature: DistillTemperature = 4.0,
    distill_weight: DistillWeight = 0.9,
    teacher: Teacher = None,
    data_dir: RunDataDir = None,
    download: Download = True,
    bench_seconds: BenchSeconds = 1.0,
    threads: Threads = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    trust_factory: TrustFactory = False,
) -> None:
    """Truncated-SVD factorization of conv and linear layers, then fine-tuning and a report."""
    from compresskit.compress.lowrank import LowRankConfig
    from compresskit.jobs import lowrank_run

    def start(source: Path, out: Path, options: "JobOptions", progress: "Progress") -> dict:
        cfg = LowRankConfig(
            rank_ratio=rank_ratio, energy=0.9 if energy is None and rank_ratio is None else energy,
            layers=layers,
        )  # fmt: skip
        return lowrank_run(source, out, cfg, _finetune_config(ctx), options=options, progress=progress)

    done = _compression_run(
        ctx, "lowrank", start,
        checkpoint=checkpoint, out=out, resume=resume, quiet=quiet, trust_factory=trust_factory,
        options=_job_options(data_dir, download, bench_seconds, threads, overwrite, distill, teacher,
                             distill_temperature, distill_weight),
    )  # fmt: skip
    if done is None:
        return
    result, out = done
    _print_report(result["table"], f"factorized → {escape(str(out))}")
    written = f"{out}/ (checkpoint.pt, factorized.pt, ranks.csv, report.md, report.csv)"
    _print_table("low-rank", [("written", written)])


def depth(
    ctx: typer.Context,
    checkpoint: Source = None,
    out: Path | None = typer.Option(None, "--out", help="Run directory to create for the shallower model."),
    resume: ResumeOut = None,
    min_gain: float = typer.Option(0.01, help="Keep blocks up to the last whose test-CSI gain exceeds this."),
    keep_blocks: int | None = typer.Option(None, help="Keep exactly this many conv blocks instead."),
    samples: int = typer.Option(1000, help="Class-balanced test images for the CSI per block."),
    finetune_epochs: FinetuneEpochs = 10,
    batch_size: FinetuneBatchSize = 128,
    lr: FinetuneLr = 0.01,
    optimizer: FinetuneOptimizer = OptimizerName.sgd,
    momentum: FinetuneMomentum = 0.9,
    weight_decay: FinetuneWeightDecay = 5e-4,
    schedule: FinetuneSchedule = ScheduleName.cosine,
    label_smoothing: FinetuneLabelSmoothing = 0.0,
    seed: Seed = 0,
    device: Device = DeviceName.auto,
    precision: PrecisionOption = PrecisionName.auto,
    sync_bn: SyncBn = False,
    distill: Distill = False,
    distill_temperature: DistillTemperature = 4.0,
    distill_weight: DistillWeight = 0.9,
    teacher: Teacher = None,
    data_dir: RunDataDir = None,
    download: Download = True,
    bench_seconds: BenchSeconds = 1.0,
    threads: Threads = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    trust_factory: TrustFactory = False,
) -> None:
    """Remove the conv blocks after test CSI stops growing, attach a fresh head, fine-tune, report."""
    from compresskit.jobs import depth_run

    def start(source: Path, out: Path, options: "JobOptions", progress: "Progress") -> dict:
        return depth_run(
            source, out, _finetune_config(ctx), min_gain=min_gain, keep_blocks=keep_blocks, samples=samples,
            options=options, progress=progress,
        )  # fmt: skip

    done = _compression_run(
        ctx, "depth", start,
        checkpoint=checkpoint, out=out, resume=resume, quiet=quiet, trust_factory=trust_factory,
        options=_job_options(data_dir, download, bench_seconds, threads, overwrite, distill, teacher,
                             distill_temperature, distill_weight),
    )  # fmt: skip
    if done is None:
        return
    result, out = done
    view = Table(box=box.SIMPLE_HEAD, title="test CSI per block", title_justify="left")
    for column in ("block", "test CSI", "gain", "kept"):
        view.add_column(column, justify="left" if column == "block" else "right")
    for row in result["depth"].itertuples():
        view.add_row(row.block, f"{row.csi_test:.3f}", f"{row.gain:+.3f}", "yes" if row.kept else "removed")
    console.print(view)
    _print_report(result["table"], f"shortened → {escape(str(out))}")
