"""The run directory: split records, the typed config, the run.json marker, and the rules for what an
output folder may be and how it is written (checked, created, staged, written atomically)."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from compresskit.data import stratified_split
from compresskit.errors import CompresskitError
from compresskit.rundir import (
    CONFIG_FILE,
    RUN_FILE,
    DataRecord,
    ModelRecord,
    RunConfig,
    SplitRecord,
    check_output,
    create_output,
    read_config,
    read_marker,
    set_state,
    staged_output,
    write_config,
    write_text_atomic,
)

# --------------------------------------------------------------------------- helpers


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every entry under `root` (itself included) as relative path -> file bytes (None for a folder)."""
    if root.is_file():
        return {".": root.read_bytes()}
    entries: dict[str, bytes | None] = {".": None} if root.is_dir() else {}
    for path in sorted(root.rglob("*")):
        entries[str(path.relative_to(root))] = path.read_bytes() if path.is_file() else None
    return entries


@pytest.fixture
def umask():
    """Set the process umask for one test and put the old one back."""
    old = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(old)


def make_own_output(folder: Path, command: str, files: dict[str, str]) -> Path:
    """A folder as `command` leaves it: a run.json naming it plus some files."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RUN_FILE).write_text(json.dumps({"command": command, "state": "finished"}))
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def labels_three_classes() -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return torch.tensor([0] * 12 + [1] * 9 + [2] * 15)[torch.randperm(36, generator=g)]


def reference_hash(indices: torch.Tensor) -> str:
    """SHA-256 of the sorted indices, each packed by hand as a little-endian signed 64-bit integer."""
    packed = b"".join(struct.pack("<q", int(i)) for i in sorted(indices.tolist()))
    return hashlib.sha256(packed).hexdigest()


def sample_config(command: str = "prune") -> RunConfig:
    split = SplitRecord.make(labels_three_classes(), 0.25, seed=3)
    return RunConfig(
        command=command,
        model=ModelRecord(
            name="vgg11_bn",
            width=0.5,
            head="linear",
            dropout=0.1,
            global_pool=True,
            spec={"stages": [[32, 32], [64]], "classes": 3},
            parameters=12345,
        ),
        data=DataRecord(
            dataset="cifar10",
            data_dir="/somewhere/cifar10",
            augment="crop 4, flip",
            split=split,
            classes=["a", "b", "c"],
            mean=[0.4914, 0.4822, 0.4465],
            std=[0.247, 0.2435, 0.2616],
            test_count=100,
        ),
        train={"epochs": 3, "lr": 0.05, "batch_size": 64},
        layerwise={"stages": 2},
        compression={"amount": 0.5, "method": "l1"},
        source="runs/base/best.pt",
        lineage=["train runs/base", "prune 0.5"],
        device="cuda",
        threads=4,
        versions={"torch": "2.3.0", "compresskit": "0.1"},
    )


def without(data: dict, keys: tuple[str, ...]) -> dict:
    data = copy.deepcopy(data)
    inner = data
    for key in keys[:-1]:
        inner = inner[key]
    del inner[keys[-1]]
    return data


# --------------------------------------------------------------------------- SplitRecord


def test_split_record_indices_are_the_stratified_split_it_was_made_from():
    labels = labels_three_classes()
    record = SplitRecord.make(labels, 0.25, seed=11)
    keep, held = record.indices(labels)
    want_keep, want_held = stratified_split(labels, 0.25, 11)
    assert torch.equal(keep, want_keep) and torch.equal(held, want_held)
    assert (record.train_count, record.val_count) == (len(want_keep), len(want_held))
    assert (record.val_fraction, record.seed) == (0.25, 11)


def test_split_record_hash_is_sha256_of_sorted_little_endian_int64_validation_indices():
    labels = labels_three_classes()
    record = SplitRecord.make(labels, 0.3, seed=5)
    _, held = stratified_split(labels, 0.3, 5)
    assert record.val_hash == reference_hash(held)
    # the same through numpy, from an unsorted copy: order of the given indices must not matter
    shuffled = held[torch.randperm(len(held), generator=torch.Generator().manual_seed(1))].numpy()
    assert record.val_hash == hashlib.sha256(np.sort(shuffled).astype("<i8").tobytes()).hexdigest()


def test_split_record_hash_differs_for_another_seed():
    labels = labels_three_classes()
    a, b = SplitRecord.make(labels, 0.25, seed=1), SplitRecord.make(labels, 0.25, seed=2)
    assert not torch.equal(stratified_split(labels, 0.25, 1)[1], stratified_split(labels, 0.25, 2)[1])
    assert a.val_hash != b.val_hash


def test_split_record_refuses_labels_with_one_label_changed():
    labels = labels_three_classes()
    record = SplitRecord.make(labels, 0.25, seed=11)
    changed = labels.clone()
    changed[0] = (changed[0] + 1) % 3
    assert not torch.equal(stratified_split(changed, 0.25, 11)[1], stratified_split(labels, 0.25, 11)[1])
    with pytest.raises(CompresskitError) as err:
        record.indices(changed, where="runs/x")
    assert f"{record.train_count}/{record.val_count}" in str(err.value)
    assert "runs/x" in str(err.value)


@pytest.mark.parametrize("length_change", [-1, +3])
def test_split_record_refuses_labels_of_another_length(length_change):
    labels = labels_three_classes()
    record = SplitRecord.make(labels, 0.25, seed=11)
    other = labels[:length_change] if length_change < 0 else torch.cat([labels, torch.tensor([0, 1, 2])])
    keep, held = stratified_split(other, 0.25, 11)
    with pytest.raises(CompresskitError) as err:
        record.indices(other)
    message = str(err.value)
    assert f"{record.train_count}/{record.val_count}" in message
    assert f"{len(keep)}/{len(held)}" in message


@pytest.mark.parametrize(
    "tamper",
    [
        {"val_hash": "0" * 64},
        {"val_count": 1},
        {"train_count": 2},
    ],
)
def test_split_record_with_tampered_fields_refuses_the_labels_it_was_made_from(tamper):
    labels = labels_three_classes()
    record = SplitRecord.make(labels, 0.25, seed=11)
    assert all(getattr(record, k) != v for k, v in tamper.items())
    tampered = SplitRecord(**{**record.__dict__, **tamper})
    with pytest.raises(CompresskitError):
        tampered.indices(labels)


# --------------------------------------------------------------------------- RunConfig


def test_run_config_round_trips_json():
    config = sample_config()
    again = RunConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert isinstance(again.model, ModelRecord)
    assert isinstance(again.data, DataRecord)
    assert isinstance(again.data.split, SplitRecord)


def test_run_config_round_trips_through_write_and_read_config(tmp_path):
    config = sample_config("lowrank")
    write_config(tmp_path, config)
    assert json.loads((tmp_path / CONFIG_FILE).read_text()) == config.to_dict()
    again = read_config(tmp_path)
    assert again == config
    labels = labels_three_classes()
    assert torch.equal(again.data.split.indices(labels)[1], stratified_split(labels, 0.25, 3)[1])


def test_run_config_optional_fields_take_their_defaults_when_absent():
    data = sample_config("train").to_dict()
    for key in ("layerwise", "compression", "source", "lineage", "device", "threads", "versions"):
        del data[key]
    config = RunConfig.from_dict(data)
    assert (config.layerwise, config.compression, config.source) == (None, None, None)
    assert (config.lineage, config.device, config.threads, config.versions) == ([], "cpu", 1, {})


def test_read_config_of_folder_without_config_names_folder_and_file(tmp_path):
    folder = tmp_path / "somerun"
    folder.mkdir()
    with pytest.raises(CompresskitError) as err:
        read_config(folder)
    assert str(folder) in str(err.value)
    assert CONFIG_FILE in str(err.value)


@pytest.mark.parametrize("text", ["{not json", "", '{"command": "train",'])
def test_read_config_with_invalid_json_names_the_path(tmp_path, text):
    (tmp_path / CONFIG_FILE).write_text(text)
    with pytest.raises(CompresskitError) as err:
        read_config(tmp_path)
    assert str(tmp_path / CONFIG_FILE) in str(err.value)


@pytest.mark.parametrize(
    "keys",
    [
        ("model",),
        ("data",),
        ("command",),
        ("train",),
        ("data", "split"),
        ("data", "classes"),
        ("model", "spec"),
        ("data", "split", "val_hash"),
        ("data", "split", "seed"),
    ],
)
def test_read_config_with_missing_required_field_names_the_field(tmp_path, keys):
    path = tmp_path / CONFIG_FILE
    path.write_text(json.dumps(without(sample_config().to_dict(), keys)))
    with pytest.raises(CompresskitError) as err:
        read_config(tmp_path)
    message = str(err.value)
    # tmp_path holds the test's name (and so the field's name): look only at the rest of the message
    assert str(path) in message
    assert keys[-1] in message.replace(str(path), "")


@pytest.mark.parametrize("value", [[1, 2], "config", None, 3])
def test_run_config_from_non_object_is_refused(value):
    with pytest.raises(CompresskitError):
        RunConfig.from_dict(value)


@pytest.mark.parametrize("keys", [("model",), ("data",), ("data", "split")])
def test_run_config_with_a_non_object_section_is_refused(keys):
    data = sample_config().to_dict()
    inner = data
    for key in keys[:-1]:
        inner = inner[key]
    inner[keys[-1]] = ["not", "an", "object"]
    with pytest.raises(CompresskitError) as err:
        RunConfig.from_dict(data)
    assert keys[-1] in str(err.value)


@pytest.mark.parametrize("command", ["evaluate", "report", "", "TRAIN"])
def test_run_config_with_unknown_command_is_refused(tmp_path, command):
    data = sample_config().to_dict()
    data["command"] = command
    with pytest.raises(CompresskitError) as err:
        RunConfig.from_dict(data)
    assert repr(command) in str(err.value)
    (tmp_path / CONFIG_FILE).write_text(json.dumps(data))
    with pytest.raises(CompresskitError):
        read_config(tmp_path)


@pytest.mark.parametrize("command", ["train", "prune", "lowrank", "depth"])
def test_run_config_accepts_every_run_command(command):
    assert RunConfig.from_dict(sample_config(command).to_dict()).command == command


# --------------------------------------------------------------------------- the run.json marker


def test_read_marker_of_folder_without_run_json_is_none(tmp_path):
    assert read_marker(tmp_path) is None
    assert read_marker(tmp_path / "missing") is None


@pytest.mark.parametrize(
    "content",
    [
        b"garbage",
        b"",
        b"[1, 2]",
        b'"train"',
        b"null",
        b'{"state": "finished"}',
        b'{"command": "x"}',
        b"\xff\xfe",
    ],
)
def test_read_marker_of_unreadable_run_json_is_none(tmp_path, content):
    (tmp_path / RUN_FILE).write_bytes(content)
    assert read_marker(tmp_path) is None


def test_read_marker_reads_command_state_and_message(tmp_path):
    (tmp_path / RUN_FILE).write_text(
        json.dumps({"command": "depth", "state": "failed", "message": "boom", "extra": 1})
    )
    marker = read_marker(tmp_path)
    assert (marker.command, marker.state, marker.message) == ("depth", "failed", "boom")


@pytest.mark.parametrize("state", ["finished", "interrupted", "failed", "running"])
def test_set_state_records_the_state_and_message(tmp_path, state):
    create_output(tmp_path / "run", "train", overwrite=False)
    before = read_marker(tmp_path / "run")
    returned = set_state(tmp_path / "run", state, "why")
    marker = read_marker(tmp_path / "run")
    assert (marker.command, marker.state, marker.message) == ("train", state, "why")
    assert marker == returned
    assert marker.created == before.created
    assert marker.updated >= before.updated


def test_set_state_refuses_an_unknown_state_and_keeps_the_marker(tmp_path):
    create_output(tmp_path / "run", "train", overwrite=False)
    before = (tmp_path / "run" / RUN_FILE).read_bytes()
    with pytest.raises(ValueError):
        set_state(tmp_path / "run", "done")
    assert (tmp_path / "run" / RUN_FILE).read_bytes() == before


@pytest.mark.parametrize("content", [None, "garbage"])
def test_set_state_refuses_a_folder_without_a_marker(tmp_path, content):
    if content is not None:
        (tmp_path / RUN_FILE).write_text(content)
    with pytest.raises(CompresskitError) as err:
        set_state(tmp_path, "finished")
    assert str(tmp_path) in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if content is None else [RUN_FILE])


# --------------------------------------------------------------------------- check_output


@pytest.mark.parametrize("overwrite", [False, True])
def test_check_output_allows_a_missing_path_and_creates_nothing(tmp_path, overwrite):
    out = tmp_path / "a" / "b"
    check_output(out, "train", overwrite=overwrite)
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("overwrite", [False, True])
def test_check_output_allows_an_empty_folder(tmp_path, overwrite):
    out = tmp_path / "out"
    out.mkdir()
    check_output(out, "train", overwrite=overwrite)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("overwrite", [False, True])
def test_check_output_refuses_a_file(tmp_path, overwrite):
    out = tmp_path / "out"
    out.write_text("keep me")
    with pytest.raises(CompresskitError) as err:
        check_output(out, "train", overwrite=overwrite)
    assert str(out) in str(err.value)
    assert out.read_text() == "keep me"


@pytest.mark.parametrize("overwrite", [False, True])
def test_check_output_refuses_a_non_empty_folder_without_marker(tmp_path, overwrite):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    with pytest.raises(CompresskitError) as err:
        check_output(out, "train", overwrite=overwrite)
    assert str(out) in str(err.value)
    assert snapshot(out) == before


@pytest.mark.parametrize("overwrite", [False, True])
def test_check_output_refuses_a_folder_made_by_another_command(tmp_path, overwrite):
    out = make_own_output(tmp_path / "out", "lowrank", {"best.pt": "weights"})
    before = snapshot(out)
    with pytest.raises(CompresskitError) as err:
        check_output(out, "prune", overwrite=overwrite)
    assert "lowrank" in str(err.value)
    assert snapshot(out) == before


def test_check_output_refuses_an_earlier_own_output_without_overwrite(tmp_path):
    out = make_own_output(tmp_path / "out", "prune", {"best.pt": "weights"})
    before = snapshot(out)
    with pytest.raises(CompresskitError) as err:
        check_output(out, "prune", overwrite=False)
    assert str(err.value).endswith("choose a new folder, or replace it with overwrite.")
    assert snapshot(out) == before


def test_check_output_allows_an_earlier_own_output_with_overwrite_and_touches_nothing(tmp_path):
    out = make_own_output(tmp_path / "out", "prune", {"best.pt": "weights"})
    before = snapshot(out)
    check_output(out, "prune", overwrite=True, inputs=[tmp_path / "source" / "best.pt"])
    assert snapshot(out) == before


def test_check_output_refuses_report_into_the_folder_holding_its_input(tmp_path, monkeypatch):
    # `compresskit report runs/a --out runs`, where runs/ is an earlier report output
    monkeypatch.chdir(tmp_path)
    make_own_output(tmp_path / "runs", "report", {"a/checkpoint.pt": "weights", "report.md": "old"})
    before = snapshot(tmp_path / "runs")
    for given in (Path("runs/a/checkpoint.pt"), Path("runs/a"), tmp_path / "runs" / "a" / "checkpoint.pt"):
        with pytest.raises(CompresskitError) as err:
            check_output(Path("runs"), "report", overwrite=True, inputs=[given])
        assert str(given) in str(err.value)
    assert snapshot(tmp_path / "runs") == before


def test_check_output_refuses_an_input_reached_through_dotdot(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_own_output(tmp_path / "runs", "report", {"a/checkpoint.pt": "weights"})
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(CompresskitError):
        check_output(tmp_path / "runs", "report", overwrite=True, inputs=[Path("elsewhere/../runs/a")])


@pytest.mark.parametrize("exists", [False, True])
def test_check_output_refuses_an_out_that_is_itself_an_input(tmp_path, exists):
    out = tmp_path / "runs" / "a"
    if exists:
        make_own_output(out, "evaluate", {"best.pt": "weights"})
    before = snapshot(tmp_path)
    with pytest.raises(CompresskitError):
        check_output(out, "evaluate", overwrite=True, inputs=[tmp_path / "x.pt", out])
    assert snapshot(tmp_path) == before


def test_check_output_allows_inputs_beside_out_with_a_common_name_prefix(tmp_path):
    out = make_own_output(tmp_path / "runs", "report", {"report.md": "old"})
    check_output(out, "report", overwrite=True, inputs=[tmp_path / "runs2" / "a.pt", tmp_path / "run"])


# --------------------------------------------------------------------------- create_output


def test_create_output_makes_a_new_folder_with_a_running_marker(tmp_path):
    out = create_output(tmp_path / "new" / "run", "depth", overwrite=False)
    assert out == tmp_path / "new" / "run"
    assert sorted(p.name for p in out.iterdir()) == [RUN_FILE]
    marker = read_marker(out)
    assert (marker.command, marker.state) == ("depth", "running")


def test_create_output_uses_an_empty_folder_in_place(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    inode = os.stat(out).st_ino
    create_output(out, "train", overwrite=False)
    assert os.stat(out).st_ino == inode
    assert read_marker(out).state == "running"


def test_create_output_replaces_an_earlier_own_output_with_overwrite(tmp_path):
    out = make_own_output(tmp_path / "run", "prune", {"best.pt": "old", "sub/history.csv": "old"})
    set_state(out, "failed", "old run")
    create_output(out, "prune", overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [RUN_FILE]
    marker = read_marker(out)
    assert (marker.command, marker.state, marker.message) == ("prune", "running", "")


def test_create_output_refuses_an_earlier_own_output_without_overwrite(tmp_path):
    out = make_own_output(tmp_path / "run", "prune", {"best.pt": "old"})
    before = snapshot(out)
    with pytest.raises(CompresskitError):
        create_output(out, "prune", overwrite=False)
    assert snapshot(out) == before


@pytest.mark.parametrize("case", ["foreign", "other-command", "holds-input", "is-input", "file"])
def test_create_output_touches_nothing_when_refused(tmp_path, case):
    out = tmp_path / "runs"
    inputs: list[Path] = []
    if case == "foreign":
        out.mkdir()
        (out / "thesis.tex").write_text("precious")
    elif case == "other-command":
        make_own_output(out, "train", {"best.pt": "weights"})
    elif case == "holds-input":
        make_own_output(out, "report", {"a/checkpoint.pt": "weights"})
        inputs = [out / "a" / "checkpoint.pt"]
    elif case == "is-input":
        make_own_output(out, "report", {"best.pt": "weights"})
        inputs = [out]
    else:
        out.write_text("a file")
    before = snapshot(tmp_path)
    with pytest.raises(CompresskitError):
        create_output(out, "report", overwrite=True, inputs=inputs)
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------- staged_output


def staging_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}."))


def test_staged_output_success_holds_the_body_files_and_a_finished_marker(tmp_path):
    folder = tmp_path / "run" / "analysis"
    with staged_output(folder, "analyze") as staging:
        assert staging != folder
        assert staging.parent == folder.parent
        assert not folder.exists()  # nothing appears in place before the body is done
        (staging / "table.csv").write_text("a,b\n")
        (staging / "plots").mkdir()
        (staging / "plots" / "p.png").write_bytes(b"png")
    assert {str(p.relative_to(folder)) for p in folder.rglob("*")} == {
        RUN_FILE,
        "plots",
        "plots/p.png",
        "table.csv",
    }
    assert (folder / "table.csv").read_text() == "a,b\n"
    marker = read_marker(folder)
    assert (marker.command, marker.state) == ("analyze", "finished")
    assert staging_leftovers(folder) == []
    assert sorted(p.name for p in folder.parent.iterdir()) == ["analysis"]


def test_staged_output_replaces_an_earlier_own_output(tmp_path):
    folder = make_own_output(tmp_path / "analysis", "analyze", {"old.csv": "old", "sub/x.txt": "old"})
    with staged_output(folder, "analyze") as staging:
        (staging / "new.csv").write_text("new")
    assert {p.name for p in folder.iterdir()} == {RUN_FILE, "new.csv"}
    assert read_marker(folder).state == "finished"
    assert staging_leftovers(folder) == []


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_staged_output_failure_leaves_the_earlier_output_untouched(tmp_path, error):
    folder = make_own_output(tmp_path / "analysis", "analyze", {"old.csv": "old", "sub/x.txt": "old"})
    before = snapshot(folder)
    with pytest.raises(error), staged_output(folder, "analyze") as staging:
        (staging / "old.csv").write_text("half-written")
        (staging / "new.csv").write_text("half-written")
        raise error("body failed")
    assert snapshot(folder) == before
    assert staging_leftovers(folder) == []


def test_staged_output_failure_creates_no_folder(tmp_path):
    folder = tmp_path / "analysis"
    with pytest.raises(RuntimeError), staged_output(folder, "analyze") as staging:
        (staging / "new.csv").write_text("half-written")
        raise RuntimeError("body failed")
    assert not folder.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", ["foreign", "other-command", "file"])
def test_staged_output_refuses_a_folder_it_may_not_replace_before_the_body_runs(tmp_path, case):
    folder = tmp_path / "analysis"
    if case == "foreign":
        folder.mkdir()
        (folder / "notes.txt").write_text("precious")
    elif case == "other-command":
        make_own_output(folder, "evaluate", {"report.txt": "precious"})
    else:
        folder.write_text("precious")
    before = snapshot(tmp_path)
    ran = False
    with pytest.raises(CompresskitError) as err:  # noqa: SIM117 - the body must stay inside the context
        with staged_output(folder, "analyze"):
            ran = True
    assert not ran
    assert str(folder) in str(err.value)
    assert snapshot(tmp_path) == before


def test_staged_output_fills_an_existing_empty_folder_in_place(tmp_path):
    folder = tmp_path / "analysis"
    folder.mkdir()
    inode = os.stat(folder).st_ino
    with staged_output(folder, "analyze") as staging:
        assert staging != folder
        (staging / "table.csv").write_text("a,b\n")
    assert os.stat(folder).st_ino == inode
    assert {p.name for p in folder.iterdir()} == {RUN_FILE, "table.csv"}
    assert (folder / "table.csv").read_text() == "a,b\n"
    assert read_marker(folder).state == "finished"
    assert staging_leftovers(folder) == []


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o755), (0o077, 0o700)])
def test_staged_output_new_folder_gets_the_umask_permissions(tmp_path, umask, mask, mode):
    umask(mask)
    folder = tmp_path / "analysis"
    with staged_output(folder, "analyze") as staging:
        (staging / "table.csv").write_text("a,b\n")
    assert os.stat(folder).st_mode & 0o777 == mode


# --------------------------------------------------------------------------- write_text_atomic


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_write_text_atomic_gives_a_new_file_the_umask_permissions(tmp_path, umask, mask, mode):
    umask(mask)
    path = write_text_atomic(tmp_path / "out.txt", "hello\n")
    assert path == tmp_path / "out.txt"
    assert path.read_text() == "hello\n"
    assert os.stat(path).st_mode & 0o777 == mode
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_write_text_atomic_replaces_an_existing_file_without_leftovers(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old content that is longer than the new one")
    write_text_atomic(path, "new")
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_write_text_atomic_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(TypeError):
        write_text_atomic(path, b"bytes are not text")  # type: ignore[arg-type]
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
