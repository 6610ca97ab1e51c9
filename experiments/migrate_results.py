"""Upgrade run directories written by an earlier compresskit to the layout of `compresskit.rundir`.

usage: python experiments/migrate_results.py RESULTS_DIR --data-dir DIR [--dry-run]

Every folder under RESULTS_DIR is upgraded in place:

* a training run (``config.json`` with ``model``, ``data``, ``train``; layer-wise runs too) gets a
  `RunConfig` with the data record rebuilt from the dataset (split, classes, mean/std), a
  ``run.json`` (train, finished), and its evaluation files moved into ``evaluation/`` (with its own
  ``run.json``); ``analysis/`` and ``sensitivity/`` get their ``run.json``;
* a compressed run (``config.json`` with ``original_run`` and ``prune``/``lowrank``/``depth``) gets
  a `RunConfig` whose spec is the one of its ``checkpoint.pt`` and whose data record is its original
  run's, and a ``run.json`` naming the method;
* a report folder (``report.md``/``report.csv``/``pareto.png``, no ``config.json``) gets a
  ``run.json`` (report, finished);
* a folder holding run folders but none of these files (an experiment folder such as
  ``layerwise/``) is left as it is, and the run folders inside it are upgraded.

A folder that already holds ``run.json`` is skipped, so running it twice changes nothing. Nothing
is deleted: files are only moved (``Path.rename``) and written. Every config written is read back
with `compresskit.rundir.read_config`, and its split is rebuilt with `SplitRecord.indices`.

Datasets are loaded from ``--data-dir`` when the recorded ``data_dir`` is relative (``data`` means
the repository's ``data/``) and from the recorded folder when it is an absolute folder that exists
(Debian's Fashion-MNIST); the recorded ``data_dir`` is kept in the config as it was.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from compresskit.checkpoint import CHECKPOINT_NAME, load_checkpoint
from compresskit.data import ImageDataset, load_dataset
from compresskit.errors import CompresskitError
from compresskit.models import POOL, ConvNet, ModelSpec
from compresskit.rundir import (
    CONFIG_FILE,
    RUN_FILE,
    SUMMARY_FILE,
    DataRecord,
    ModelRecord,
    RunConfig,
    RunMarker,
    SplitRecord,
    read_config,
    read_marker,
    write_config,
    write_json,
)
from compresskit.train import TrainConfig

MESSAGE = "migrated from an earlier compresskit layout by experiments/migrate_results.py"
EVALUATION_DIR = "evaluation"
EVALUATION_FILES = ("evaluation.json", "per_class.csv", "confusion.csv", "confusion.png", "most_confused.csv")
DERIVED = {"analysis": ("analyze", "layers.csv"), "sensitivity": ("sensitivity", "sensitivity.csv")}
REPORT_FILES = ("report.md", "report.csv", "pareto.png")
METHODS = ("prune", "lowrank", "depth")
METHOD_KEYS = {
    "prune": ("prune", "layer_ratios", "calibration_samples"),
    "lowrank": ("lowrank", "factorized"),
    "depth": ("depth",),
}


class MigrationError(Exception):
    """A folder that cannot be upgraded exactly; nothing more is written."""


# --------------------------------------------------------------------------- helpers


def created_time(path: Path) -> float:
    """When `path` was first committed (git), else its mtime: the best record of when it was made."""
    try:
        out = subprocess.run(
            ["git", "log", "--diff-filter=A", "--format=%ct", "--", path.name],
            cwd=path.parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        if out:
            return float(out[-1])
    except (OSError, subprocess.CalledProcessError):
        pass
    return path.stat().st_mtime


def marker(command: str, made_from: Path) -> dict:
    when = created_time(made_from) if made_from.exists() else time.time()
    return asdict(RunMarker(command=command, state="finished", created=when, updated=when, message=MESSAGE))


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MigrationError(f"{path} could not be read as JSON ({exc})") from None


class Context:
    """What every folder's migration shares: the datasets (each loaded once; `--data-dir` for a
    relative recorded data_dir), whether to write, and the folder recorded paths are relative to."""

    def __init__(self, data_dir: Path, base: Path, dry_run: bool) -> None:
        self.data_dir = data_dir
        self.base = base
        self.dry_run = dry_run
        self.loaded: dict[tuple[str, str], ImageDataset] = {}

    def source_folder(self, recorded: str) -> Path:
        """The run folder of a recorded source checkpoint path (relative to where it was run)."""
        path = Path(recorded)
        if not path.is_absolute() and not path.exists():
            path = self.base / path
        return path.parent

    def dataset(self, name: str, recorded: str | None) -> ImageDataset:
        where = Path(recorded) if recorded and Path(recorded).is_absolute() else self.data_dir
        if not where.is_dir():
            where = self.data_dir
        key = (name, str(where))
        if key not in self.loaded:
            try:
                self.loaded[key] = load_dataset(name, where, download=False)
            except CompresskitError as exc:
                raise MigrationError(f"{name} could not be loaded from {where}: {exc}") from None
        return self.loaded[key]


def data_record(old: dict, seed: int, ctx: Context, where: Path) -> tuple[DataRecord, ImageDataset]:
    """The new `DataRecord` of an old ``data`` dict, checked against the counts recorded then."""
    data = ctx.dataset(old["dataset"], old.get("data_dir"))
    split = SplitRecord.make(data.train.labels, float(old["val_fraction"]), int(seed))
    recorded = (old.get("train_samples"), old.get("val_samples"), old.get("test_samples"))
    found = (split.train_count, split.val_count, len(data.test))
    if recorded != found:
        raise MigrationError(
            f"{where}: the {old['dataset']} data found now give a {found[0]}/{found[1]} train/validation "
            f"split and {found[2]} test images, but the run recorded {recorded[0]}/{recorded[1]} and "
            f"{recorded[2]}; point --data-dir at the data the run was trained on"
        )
    record = DataRecord(
        dataset=old["dataset"],
        data_dir=old.get("data_dir"),
        augment=old["augment"],
        split=split,
        classes=list(data.classes),
        mean=list(data.mean),
        std=list(data.std),
        test_count=len(data.test),
    )
    return record, data


def check_against_checkpoint(record: DataRecord, folder: Path) -> None:
    """The classes and statistics a checkpoint recorded must be the ones rebuilt from the data."""
    path = folder / CHECKPOINT_NAME
    if not path.is_file():
        return
    meta = load_checkpoint(path).meta
    if "classes" in meta and list(meta["classes"]) != record.classes:
        raise MigrationError(f"{path} records classes {meta['classes']}, the data now give {record.classes}")
    for key in ("mean", "std"):
        if key in meta and any(
            abs(a - b) > 1e-9 for a, b in zip(meta[key], getattr(record, key), strict=True)
        ):
            raise MigrationError(
                f"{path} records {key} {meta[key]}, the data now give {getattr(record, key)}; "
                "these are not the images the run was trained on"
            )


def normalised_spec(spec: dict, where: Path) -> dict:
    try:
        return ModelSpec.from_dict(spec).to_dict()
    except (CompresskitError, TypeError) as exc:
        raise MigrationError(f"{where}: the recorded model spec is not valid ({exc})") from None


def count_parameters(spec: dict) -> int:
    return sum(p.numel() for p in ConvNet(ModelSpec.from_dict(spec)).parameters())


def verify(folder: Path, config: RunConfig, data: ImageDataset) -> None:
    """Round trip through `read_config`, rebuild the split, and check the stored settings."""
    back = read_config(folder)
    if back.to_dict() != json.loads(json.dumps(config.to_dict())):
        raise MigrationError(f"{folder / CONFIG_FILE} does not read back as the config written")
    back.data.split.indices(data.train.labels, where=str(folder))
    TrainConfig(**back.train)
    ModelSpec.from_dict(back.model.spec)


# --------------------------------------------------------------------------- training runs


def train_step(old: dict, folder_name: str) -> str:
    return f"train {old['model']['spec']['name']} ({folder_name})"


def migrate_training(folder: Path, old: dict, ctx: Context) -> str:
    record, data = data_record(old["data"], old["train"]["seed"], ctx, folder)
    check_against_checkpoint(record, folder)
    spec = normalised_spec(old["model"]["spec"], folder)
    model = {k: old["model"][k] for k in ("name", "width", "head", "dropout", "global_pool", "parameters")}
    if count_parameters(spec) != model["parameters"]:
        raise MigrationError(
            f"{folder}: the recorded spec has {count_parameters(spec)} parameters, config.json says "
            f"{model['parameters']}"
        )
    config = RunConfig(
        command="train",
        model=ModelRecord(**model, spec=spec),
        data=record,
        train=old["train"],
        layerwise=old.get("layerwise"),
        lineage=[train_step(old, folder.name)],
        device=old.get("device", "cpu"),
        threads=old.get("threads", 1),
        versions=old.get("versions", {}),
    )
    done = [f"split {record.split.train_count}/{record.split.val_count}"]
    done += move_evaluation(folder, ctx)
    done += mark_derived(folder, ctx)
    if not ctx.dry_run:
        write_config(folder, config)
        verify(folder, config, data)
        write_json(folder / RUN_FILE, marker("train", folder / SUMMARY_FILE))
    kind = "layer-wise training run" if config.layerwise else "training run"
    return f"{kind}: config.json → RunConfig(train), run.json; " + "; ".join(done)


def move_evaluation(folder: Path, ctx: Context) -> list[str]:
    target = folder / EVALUATION_DIR
    found = [name for name in EVALUATION_FILES if (folder / name).is_file()]
    if not found:
        if target.is_dir() and read_marker(target) is not None:
            return ["evaluation/ already has run.json"]
        if target.is_dir() and (target / "evaluation.json").is_file():
            if not ctx.dry_run:
                write_json(target / RUN_FILE, marker("evaluate", target / "evaluation.json"))
            return ["evaluation/run.json (evaluate)"]
        return []
    clash = [name for name in found if (target / name).exists()]
    if clash:
        raise MigrationError(f"{folder}: {EVALUATION_DIR}/ already holds {', '.join(clash)}; nothing moved")
    if not ctx.dry_run:
        target.mkdir(exist_ok=True)
        first_made = folder / "evaluation.json"
        when = marker("evaluate", first_made if first_made.is_file() else folder / found[0])
        for name in found:
            (folder / name).rename(target / name)
        write_json(target / RUN_FILE, when)
    return [f"moved {', '.join(found)} into evaluation/ (+ run.json)"]


def mark_derived(folder: Path, ctx: Context) -> list[str]:
    done = []
    for sub, (command, made_from) in DERIVED.items():
        path = folder / sub
        if not path.is_dir():
            continue
        if read_marker(path) is not None:
            done.append(f"{sub}/ already has run.json")
            continue
        if not ctx.dry_run:
            write_json(path / RUN_FILE, marker(command, path / made_from))
        done.append(f"{sub}/run.json ({command})")
    return done


# --------------------------------------------------------------------------- compressed runs


def method_of(old: dict, where: Path) -> str:
    methods = [m for m in METHODS if m in old]
    if len(methods) != 1:
        raise MigrationError(f"{where}: expected exactly one of {', '.join(METHODS)} in config.json")
    return methods[0]


def compression_step(old: dict, method: str) -> str:
    """The lineage step the earlier compresskit would have written for this compression."""
    if method == "prune":
        p = old["prune"]
        how = f"{p['scope']}, allocate {p['allocate']}, steps {p['steps']}"
        return f"prune {p['importance']} {p['ratio']:g} ({how})"
    if method == "lowrank":
        c = old["lowrank"]
        how = f"energy {c['energy']:g}" if c.get("energy") is not None else f"rank ratio {c['rank_ratio']:g}"
        return f"lowrank {how} ({c['layers']})"
    d = old["depth"]
    rule = f"keep {d['keep_blocks']}" if d.get("keep_blocks") else f"min gain {d['min_gain']:g}"
    return f"depth {d['kept']} blocks ({rule})"


def lineage_of(folder: Path, ctx: Context, seen: tuple[Path, ...] = ()) -> list[str]:
    """Every step that made `folder`, from its config (old or new layout)."""
    if folder.resolve() in seen:
        raise MigrationError(f"{folder}: its sources form a cycle")
    old = read_json(folder / CONFIG_FILE)
    if "command" in old:  # already migrated
        return list(old["lineage"])
    if "original_run" not in old:
        return [train_step(old, folder.name)]
    method = method_of(old, folder)
    source = ctx.source_folder(old.get("compressed_from") or old["pruned_from"])
    if (source / CONFIG_FILE).is_file():
        return [*lineage_of(source, ctx, (*seen, folder.resolve())), compression_step(old, method)]
    if old.get("lineage"):
        return list(old["lineage"])
    raise MigrationError(f"{folder}: its source {source} has no config.json and it records no lineage")


def final_spec(folder: Path, source_spec: dict, summary: dict) -> tuple[dict, str]:
    """The spec of the compressed model the folder holds, and where it was read from."""
    for name in (CHECKPOINT_NAME, "pruned.pt"):
        if (folder / name).is_file():
            return load_checkpoint(folder / name).spec.to_dict(), f"spec from {name}"
    widths = summary.get("conv_widths")
    spec = dict(source_spec)
    convs = [c for c in spec["layers"] if c != POOL]
    if widths is None or len(widths) != len(convs) or spec.get("conv_ranks") or spec.get("linear_ranks"):
        raise MigrationError(
            f"{folder}: no checkpoint.pt or pruned.pt, and the summary's conv_widths cannot be laid on the "
            "source spec; the final spec is unknown"
        )
    it = iter(widths)
    spec["layers"] = [c if c == POOL else next(it) for c in spec["layers"]]
    return normalised_spec(spec, folder), "spec REBUILT from the source spec and summary conv_widths"


def migrate_compressed(folder: Path, old: dict, ctx: Context) -> str:
    method = method_of(old, folder)
    original = old["original_run"]
    summary = read_json(folder / SUMMARY_FILE)
    record, data = data_record(original["data"], original["train"]["seed"], ctx, folder)
    check_against_checkpoint(record, folder)
    spec, spec_from = final_spec(folder, original["model"]["spec"], summary)
    parameters = int(summary["parameters"])
    if count_parameters(spec) != parameters:
        raise MigrationError(
            f"{folder}: the final spec has {count_parameters(spec)} parameters, "
            f"summary.json says {parameters}"
        )
    source = old.get("compressed_from") or old["pruned_from"]
    lineage = lineage_of(folder, ctx)
    recorded = old.get("lineage")
    compression = {
        "method": method,
        "step": lineage[-1],
        **{k: old[k] for k in METHOD_KEYS[method] if k in old},
    }
    source_model = original["model"]
    config = RunConfig(
        command=method,
        model=ModelRecord(
            name=spec["name"],
            width=source_model["width"],
            head=source_model["head"],
            dropout=source_model["dropout"],
            global_pool=source_model["global_pool"],
            spec=spec,
            parameters=parameters,
        ),
        data=record,
        train=old["finetune"],
        compression=compression,
        source=source,
        lineage=lineage,
        device=old.get("device", "cpu"),
        threads=old.get("threads", 1),
        versions=original.get("versions", {}),
    )
    if not ctx.dry_run:
        write_config(folder, config)
        verify(folder, config, data)
        write_json(folder / RUN_FILE, marker(method, folder / SUMMARY_FILE))
    if recorded is None:
        said = "lineage reconstructed"
    elif recorded == lineage:
        said = "lineage as recorded"
    else:
        said = f"lineage CORRECTED from the recorded {recorded}"
    return (
        f"compressed run ({method}): config.json → RunConfig({method}), run.json; {spec_from}; "
        f"{' → '.join(lineage)} ({said})"
    )


def finish_half_migrated(folder: Path, ctx: Context) -> str:
    """A folder whose config.json was rewritten by an interrupted earlier migration but that has no
    run.json yet: check the config and finish the folder."""
    config = read_config(folder)
    data = ctx.dataset(config.data.dataset, config.data.data_dir)
    done = ["config.json already in the new layout (checked)"]
    if config.command == "train":
        done += move_evaluation(folder, ctx)
        done += mark_derived(folder, ctx)
    if not ctx.dry_run:
        verify(folder, config, data)
        write_json(folder / RUN_FILE, marker(config.command, folder / SUMMARY_FILE))
    return f"finished an interrupted migration ({config.command}): run.json; " + "; ".join(done)


# --------------------------------------------------------------------------- the walk


def migrate_folder(folder: Path, ctx: Context) -> str:
    if read_marker(folder) is not None:
        return "skipped: already holds run.json"
    config_path = folder / CONFIG_FILE
    if config_path.is_file():
        old = read_json(config_path)
        if "command" in old:
            return finish_half_migrated(folder, ctx)
        if "original_run" in old:
            return migrate_compressed(folder, old, ctx)
        if {"model", "data", "train"} <= set(old):
            return migrate_training(folder, old, ctx)
        raise MigrationError(f"{config_path} is neither a training nor a compressed run's config")
    if any((folder / name).is_file() for name in REPORT_FILES):
        if not ctx.dry_run:
            made_from = next(folder / n for n in REPORT_FILES if (folder / n).is_file())
            write_json(folder / RUN_FILE, marker("report", made_from))
        return "report folder: run.json (report)"
    return ""


def walk(results: Path, ctx: Context) -> int:
    failures = 0
    for folder in sorted(p for p in results.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            said = migrate_folder(folder, ctx)
        except (MigrationError, CompresskitError) as exc:
            print(f"{folder}: FAILED: {exc}", file=sys.stderr)
            failures += 1
            continue
        if said:
            print(f"{folder}: {said}", flush=True)
            continue
        inner = [p for p in folder.iterdir() if p.is_dir() and (p / CONFIG_FILE).is_file()]
        if inner:
            print(f"{folder}: experiment folder, left as it is; migrating the runs inside", flush=True)
            failures += walk(folder, ctx)
        else:
            print(f"{folder}: not a run folder, left as it is", flush=True)
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="folder holding run directories (e.g. results)")
    parser.add_argument("--data-dir", type=Path, required=True, help="folder holding the datasets now")
    parser.add_argument("--dry-run", action="store_true", help="say what would be done; write nothing")
    args = parser.parse_args(argv)
    if not args.results.is_dir():
        parser.error(f"{args.results} is not a directory")
    if args.dry_run:
        print("dry run: nothing is written")
    ctx = Context(args.data_dir, args.results.resolve().parent, args.dry_run)
    failures = walk(args.results, ctx)
    if failures:
        print(f"{failures} folder(s) could not be migrated; see above", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
