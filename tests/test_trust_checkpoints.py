"""Crafted checkpoints cost no more than their size: a zip bomb, a recorded model config that asks for
gigabytes its weights do not hold, and a malformed serving catalogue are each one line, before any
allocation they would size."""

from __future__ import annotations

import copy
import resource
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from recsys_lightning.errors import ConfigError
from recsys_lightning.evaluate import evaluate
from recsys_lightning.models.weights import expected_weights
from recsys_lightning.runs.checkpoint_file import catalogue_from_checkpoint, find_checkpoint, load_checkpoint
from recsys_lightning.runs.checkpoint_io import AtomicCheckpointIO
from recsys_lightning.runs.trained_run import load_trained

from helpers import CONF, ROOT, recommender_options

MIB = 1 << 20


def copied_run(movielens_run: Path, tmp_path: Path, edit=lambda checkpoint: None) -> tuple[Path, Path]:
    """A copy of a real run folder and its best checkpoint after `edit(checkpoint)`."""
    run_dir = tmp_path / "run"
    shutil.copytree(movielens_run, run_dir, ignore=shutil.ignore_patterns("events.out.*", "0*"))
    path = find_checkpoint(run_dir)
    checkpoint = torch.load(path, weights_only=True)
    edit(checkpoint)
    torch.save(checkpoint, path)
    return run_dir, path


def rewritten_zip(path: Path, deflated=(), duplicated=(), extra: dict[str, bytes] | None = None) -> None:
    """The zip at `path` with the entries named in `deflated` compressed, `extra` records added (a name
    already there is then listed twice), and each name in `duplicated` listed once more as `<name>9<n>`,
    pointing at the same bytes."""
    rewritten = path.with_suffix(".rewritten")
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(rewritten, "w") as target:
        for info in source.infolist():
            entry = zipfile.ZipInfo(info.filename, date_time=info.date_time)
            entry.compress_type = zipfile.ZIP_DEFLATED if info.filename in deflated else zipfile.ZIP_STORED
            with source.open(info) as reader, target.open(entry, "w") as writer:
                shutil.copyfileobj(reader, writer, MIB)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zipfile's "Duplicate name"
            for name, content in (extra or {}).items():
                target.writestr(name, content)
        for number, name in enumerate(duplicated):
            twin = copy.copy(target.getinfo(name))
            twin.filename = f"{name}9{number}"
            target.filelist.append(twin)  # written into the central directory on close, same offset
    rewritten.replace(path)


def zip_folder(path: Path) -> str:
    """The one folder torch.save puts a checkpoint's records in (named after the file)."""
    with zipfile.ZipFile(path) as archive:
        return archive.namelist()[0].split("/")[0]


def largest_entry(path: Path) -> str:
    with zipfile.ZipFile(path) as archive:
        return max(archive.infolist(), key=lambda info: info.file_size).filename


def with_padding(checkpoint: dict) -> None:
    checkpoint["padding"] = torch.zeros(16 * MIB)  # 64 MiB of zeros: a few KiB once deflated


def run_capped(module: str, *overrides: str, cap_gb: float = 4.0) -> subprocess.CompletedProcess:
    """An entry point as a user runs it, its address space capped: what needs gigabytes fails."""

    def capped() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (int(cap_gb * (1 << 30)),) * 2)

    command = [sys.executable, "-m", module, *overrides]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, preexec_fn=capped)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    return errors[0]


def refused(path: Path) -> list[str]:
    """What serving's loader and Lightning's (resume, validate and test a checkpoint) say: both must refuse."""
    messages = []
    for read in (lambda: load_trained(path), lambda: AtomicCheckpointIO().load_checkpoint(path)):
        with pytest.raises(ConfigError) as error:
            read()
        messages.append(str(error.value))
    assert messages[0] == messages[1] and "\n" not in messages[0]
    return messages[:1]


# -- the zip directory, read before torch reads the file ---------------------------------------------


@pytest.mark.slow
def test_a_zip_bomb_checkpoint_is_one_line_through_recommend(movielens_run, tmp_path):
    run_dir, path = copied_run(movielens_run, tmp_path, with_padding)
    rewritten_zip(path, deflated=[largest_entry(path)])
    assert path.stat().st_size < 5 * MIB
    line = one_error_line(run_capped("recsys_lightning.recommend", f"run_dir={run_dir}", f"checkpoint={path}", "user_id=1", "k=3"))
    assert (
        line.startswith(f"error: {path}: refused, its zip entry '{zip_folder(path)}/data/")
        and "is compressed (67,108,864 bytes from" in line
    )
    assert line.endswith("; torch never writes that, the file was altered")


@pytest.mark.slow
def test_any_compressed_entry_is_refused_whatever_its_size(movielens_run, tmp_path):
    _, path = copied_run(movielens_run, tmp_path)
    rewritten_zip(path, deflated=[f"{zip_folder(path)}/version"])  # 2 bytes: the refusal does not depend on size
    (message,) = refused(path)
    assert f"its zip entry '{zip_folder(path)}/version' is compressed" in message


@pytest.mark.slow
@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (dict(extra={"{folder}/extra.bin": b"x"}), "its zip holds '{folder}/extra.bin', not a record of a torch checkpoint"),
        (dict(extra={"other/data/99": b"x"}), "its zip holds"),  # a second folder
        (dict(extra={"{folder}/data/7x": b"x"}), "its zip holds '{folder}/data/7x'"),
        (dict(duplicated=["{folder}/data.pkl"]), "its zip holds '{folder}/data.pkl90'"),
        (dict(extra={"{folder}/version": b"3"}), "its zip lists a record twice"),
    ],
)
def test_zip_entries_torch_never_writes_are_refused(movielens_run, tmp_path, change, expected):
    _, path = copied_run(movielens_run, tmp_path)
    folder = zip_folder(path)
    extra = {name.format(folder=folder): content for name, content in change.get("extra", {}).items()}
    rewritten_zip(path, extra=extra, duplicated=[name.format(folder=folder) for name in change.get("duplicated", [])])
    (message,) = refused(path)
    assert expected.format(folder=folder) in message and message.endswith("the file was altered"), message


@pytest.mark.slow
def test_entries_sharing_their_bytes_are_refused(movielens_run, tmp_path):
    """Stored entries pointing at the same bytes (the other zip bomb) add up to more than the file."""
    _, path = copied_run(movielens_run, tmp_path)
    rewritten_zip(path, duplicated=[largest_entry(path)] * 10)
    (message,) = refused(path)
    assert "its zip entries add up to" in message and "more than the file's" in message


@pytest.mark.slow
def test_an_unknown_top_level_key_is_refused_even_stored(movielens_run, tmp_path):
    _, path = copied_run(movielens_run, tmp_path, lambda checkpoint: checkpoint.update(extra=torch.zeros(3)))
    (message,) = refused(path)
    assert message == f"{path}: refused, it holds the key 'extra', which no checkpoint of this project has; the file was altered"


@pytest.mark.slow
@pytest.mark.parametrize("where", ["state_dict", "catalogue", "optimizer"])
def test_a_tensor_claiming_more_elements_than_stored_is_refused(movielens_run, tmp_path, where):
    """torch.load rebuilds a stride-0 view as recorded: [5M, 64] from 4 bytes, until a copy allocates it all."""
    huge = torch.zeros(1, 1).expand(5_000_000, 64)

    def edit(checkpoint: dict) -> None:
        if where == "state_dict":
            checkpoint["state_dict"]["model.item_factors"] = huge
        elif where == "catalogue":
            checkpoint["catalogue"]["seen_items"] = torch.zeros(1, dtype=torch.int32).expand(10**9)
        else:
            checkpoint["optimizer_states"][0]["state"][0]["exp_avg"] = huge

    _, path = copied_run(movielens_run, tmp_path, edit)
    (message,) = refused(path)
    assert "claims more elements than the file stores" in message
    assert where in message


@pytest.mark.slow
def test_the_untouched_checkpoint_still_loads_everywhere(movielens_run, tmp_path):
    _, path = copied_run(movielens_run, tmp_path)
    trained = load_trained(path)
    assert trained.model.user_factors.shape == (943, 64)
    assert set(AtomicCheckpointIO().load_checkpoint(path)) == set(load_checkpoint(path))


# -- the recorded model config, compared with the weights before it is built ------------------------

CRAFTED_MODELS = {
    "features": (
        {"features": True, "num_item_features": 5_000_000},
        "model.item_features.embedding is missing, this model needs [5000000, 65]",
    ),
    "hidden": (
        {"_target_": "recsys_lightning.models.HybridMF", "dim": 64, "hidden": [65536] * 8},
        "model.mlp.user_in.weight is missing, this model needs [65536, 64]",
    ),
    "dim": ({"dim": 65536}, "model.user_factors is [943, 64], this model needs [943, 65536]"),
}


def crafted_model(kind: str):
    """The recorded model config with the case's keys, or replaced by it when it names another model."""
    changes = CRAFTED_MODELS[kind][0]

    def edit(checkpoint: dict) -> None:
        recorded = checkpoint["hyper_parameters"]["model"]
        checkpoint["hyper_parameters"]["model"] = changes if "_target_" in changes else {**recorded, **changes}

    return edit


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(CRAFTED_MODELS))
def test_a_recorded_model_its_weights_do_not_fit_is_refused_before_it_is_built(movielens_run, tmp_path, kind):
    run_dir, path = copied_run(movielens_run, tmp_path, crafted_model(kind))
    expected = f"{path}: its weights do not fit its model config ({CRAFTED_MODELS[kind][1]})"
    with pytest.raises(ConfigError) as served:
        load_trained(path)
    assert str(served.value) == expected
    with pytest.raises(ConfigError) as evaluated:
        evaluate(run_dir, accelerator="cpu")
    assert str(evaluated.value) == expected


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["features", "hidden"])
def test_a_recorded_model_asking_for_gigabytes_is_one_line_within_4_gb(movielens_run, tmp_path, kind):
    """Before the meta build: 2.9 GB for the features case, 7 x 17 GB for the hidden layers."""
    run_dir, path = copied_run(movielens_run, tmp_path, crafted_model(kind))
    for module, overrides in (("recsys_lightning.recommend", ["user_id=1"]), ("recsys_lightning.evaluate", [])):
        line = one_error_line(run_capped(module, f"run_dir={run_dir}", *overrides))
        assert line == f"error: {path}: its weights do not fit its model config ({CRAFTED_MODELS[kind][1]})"


@pytest.mark.parametrize("option", recommender_options())
def test_every_model_is_sized_on_the_meta_device_without_memory(option):
    """Ten million users by 40,000 items: gigabytes for real (EASE's item matrix alone is 6.4 GB), nothing on meta."""
    config = yaml.safe_load((CONF / "model" / f"{option}.yaml").read_text())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    weights = expected_weights(config, 10_000_000, 40_000)
    assert weights and all(tensor.is_meta for tensor in weights.values())
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024  # KiB: under 100 MiB more


# -- the serving catalogue --------------------------------------------------------------------------


def _set(key, value):
    return lambda catalogue: catalogue.update({key: value(catalogue)})


CATALOGUE_EDITS = {
    "indptr decreasing": (_set("seen_indptr", lambda c: c["seen_indptr"].flip(0)), "seen_indptr does not run from 0 up to"),
    "indptr overshooting": (_set("seen_indptr", lambda c: c["seen_indptr"] * 2), "seen_indptr does not run from 0 up to"),
    "indptr negative": (_set("seen_indptr", lambda c: c["seen_indptr"] - 1), "seen_indptr does not run from 0 up to"),
    "indptr not from 0": (
        _set("seen_indptr", lambda c: torch.cat([c["seen_indptr"][:1] + 5, c["seen_indptr"][1:]])),
        "does not run from 0",
    ),
    "indptr beyond int64 arithmetic": (
        _set("seen_indptr", lambda c: torch.cat([c["seen_indptr"][:-2], torch.tensor([2**62, 100_000])])),
        "never decreasing",
    ),
    "indptr as double": (_set("seen_indptr", lambda c: c["seen_indptr"].double()), "seen_indptr is a torch.float64 tensor"),
    "indptr short": (_set("seen_indptr", lambda c: c["seen_indptr"][:-3]), "seen_indptr has 941 entries, not 944"),
    "indptr 2-D": (_set("seen_indptr", lambda c: c["seen_indptr"][None]), "not a 1-D torch.int64 tensor"),
    "indptr sparse": (_set("seen_indptr", lambda c: c["seen_indptr"].to_sparse()), "not a 1-D torch.int64 tensor"),
    "indptr a list": (_set("seen_indptr", lambda c: c["seen_indptr"].tolist()), "seen_indptr is a list"),
    "duplicate item ids": (
        _set("item_ids", lambda c: torch.cat([c["item_ids"][:1], c["item_ids"][:-1]])),
        "item_ids lists 1 more than once",
    ),
    "duplicate user ids": (
        _set("user_ids", lambda c: torch.cat([c["user_ids"][1:], c["user_ids"][-1:]])),
        "user_ids lists 943 more than once",
    ),
    "duplicate text ids": (_set("item_ids", lambda c: ["a"] * len(c["item_ids"])), "item_ids lists 'a' more than once"),
    "ids nested in a list": (_set("user_ids", lambda c: [[str(i)] for i in c["user_ids"].tolist()]), "user_ids is a list holding"),
    "ids as a list of ints": (_set("user_ids", lambda c: c["user_ids"].tolist()), "user_ids is a list holding"),
    "ids as int32": (_set("item_ids", lambda c: c["item_ids"].int()), "item_ids is a torch.int32 tensor"),
    "ids empty": (_set("item_ids", lambda c: torch.zeros(0, dtype=torch.long)), "item_ids is empty"),
    "short seen_parts": (_set("seen_parts", lambda c: c["seen_parts"][:-5]), "seen_parts has 99995 entries, not 100000"),
    "seen_parts as int64": (_set("seen_parts", lambda c: c["seen_parts"].long()), "seen_parts is a torch.int64 tensor"),
    "seen_parts out of range": (_set("seen_parts", lambda c: c["seen_parts"] + 3), "seen_parts holds codes outside 0-2"),
    "seen_items out of range": (_set("seen_items", lambda c: c["seen_items"] + 2000), "seen_items holds item indices outside [0, 1682)"),
    "seen_items negative": (_set("seen_items", lambda c: c["seen_items"] - 2000), "seen_items holds item indices outside"),
    "seen_items unsorted": (_set("seen_items", lambda c: c["seen_items"].flip(0)), "a user's seen_items are not sorted and distinct"),
    "seen_items as float": (_set("seen_items", lambda c: c["seen_items"].float()), "seen_items is a torch.float32 tensor"),
    "popularity short": (_set("popularity", lambda c: c["popularity"][:-1]), "popularity has 1681 entries, not 1682"),
    "popularity as float": (_set("popularity", lambda c: c["popularity"].float()), "popularity is a torch.float32 tensor"),
    "popularity negative": (_set("popularity", lambda c: -c["popularity"]), "popularity holds negative counts"),
    "titles a string": (_set("titles", lambda c: "Toy Story"), "titles is not a list of 1682 strings"),
    "titles a tuple": (_set("titles", lambda c: tuple(c["titles"])), "titles is not a list of 1682 strings"),
    "titles short": (_set("titles", lambda c: c["titles"][:-1]), "titles is not a list of 1682 strings"),
    "titles nested": (_set("titles", lambda c: [[title] for title in c["titles"]]), "titles is not a list of 1682 strings"),
    "titles of numbers": (_set("titles", lambda c: list(range(len(c["titles"])))), "titles is not a list of 1682 strings"),
    "a key missing": (lambda c: c.pop("popularity"), "its keys are"),
    "a key added": (lambda c: c.update(extra=1), "its keys are"),
}


@pytest.fixture(scope="module")
def catalogue_state(movielens_run) -> dict:
    return load_checkpoint(find_checkpoint(movielens_run))["catalogue"]


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CATALOGUE_EDITS))
def test_a_malformed_catalogue_is_one_line_naming_what(catalogue_state, case):
    state = dict(catalogue_state)
    edit, detail = CATALOGUE_EDITS[case]
    edit(state)
    with pytest.raises(ConfigError) as error:
        catalogue_from_checkpoint(state, "run.ckpt")
    message = str(error.value)
    assert message.startswith("run.ckpt: its serving catalogue is malformed (") and detail in message, message
    assert message.endswith("; the file was altered") and "\n" not in message


@pytest.mark.slow
def test_the_real_catalogue_reads_back_equal(catalogue_state):
    catalogue = catalogue_from_checkpoint(catalogue_state, "run.ckpt")
    assert catalogue.num_users == 943 and catalogue.num_items == 1682 and len(catalogue.seen.indices) == 100_000
    assert catalogue.to_state()["seen_indptr"].equal(catalogue_state["seen_indptr"])


@pytest.mark.slow
def test_a_catalogue_version_true_is_not_version_1(catalogue_state):
    with pytest.raises(ConfigError, match="serving catalogue is version True"):
        catalogue_from_checkpoint({**catalogue_state, "version": True}, "run.ckpt")


@pytest.mark.slow
def test_duplicate_item_ids_are_one_line_through_recommend(movielens_run, tmp_path):
    run_dir, path = copied_run(
        movielens_run, tmp_path, lambda checkpoint: CATALOGUE_EDITS["duplicate item ids"][0](checkpoint["catalogue"])
    )
    line = one_error_line(run_capped("recsys_lightning.recommend", f"run_dir={run_dir}", "user_id=1"))
    assert line == f"error: {path}: its serving catalogue is malformed (item_ids lists 1 more than once); the file was altered"
