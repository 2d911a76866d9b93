"""A run's checkpoint and metrics.json, read as untrusted files: training, resume, evaluate and serving
all find and load them here, so the checks (plain data only, format version, catalogue) are made once.
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from recsys_lightning.data.catalogue import STATE_VERSION, Catalogue, MalformedCatalogue
from recsys_lightning.data.catalogue_reference import PREPARED_KEY, CatalogueReference
from recsys_lightning.errors import ConfigError, cut, first_line, quote
from recsys_lightning.prepared.folder import PreparedFolder
from recsys_lightning.prepared.layout import MANIFEST
from recsys_lightning.sharded import SAVE_KEY, save_id_of, tables_folder

FORMAT_KEY = "recsys_lightning_format"
FORMAT_VERSION = 1  # raise it when a checkpoint's layout changes, so old files are refused by name, not by a KeyError
CATALOGUE_KEY = "catalogue"
BEST_CHECKPOINT_KEY = "best_checkpoint"
METRICS_LIMIT = 1 << 20  # bytes; a real metrics.json is about 1 KiB
CHECKPOINT_REMEDY = "pass checkpoint=last or checkpoint=<path>"
# The records torch.save (2.x) writes, all in one folder of the zip; a tensor's bytes are data/<n>.
TORCH_RECORD = re.compile(
    r"[^/]+/(data\.pkl|\.format_version|\.storage_alignment|byteorder|version|\.data/version|\.data/serialization_id|data/[0-9]+)"
)
# The top-level keys of a checkpoint: Lightning's (a precision plugin with state adds its class name) and ours.
LIGHTNING_KEYS = frozenset(
    {
        "epoch",
        "global_step",
        "pytorch-lightning_version",
        "state_dict",
        "loops",
        "callbacks",
        "optimizer_states",
        "lr_schedulers",
        "hparams_name",
        "hyper_parameters",
        "MixedPrecision",
    }
)
CHECKPOINT_KEYS = LIGHTNING_KEYS | {FORMAT_KEY, CATALOGUE_KEY, SAVE_KEY}


def find_checkpoint(run_dir: str | Path, which: str = "best") -> Path:
    """`best` (the one metrics.json names, else the only epochNNN.ckpt), `last`, or a path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run_dir={run_dir}: no such folder; point it at a training run (outputs/runs/<date>/<time>_<name>)")
    if which == "last":
        candidates = [run_dir / "checkpoints" / "last.ckpt"]
    elif which == "best":
        recorded = read_run_metrics(run_dir, remedy=checkpoint_remedy(run_dir)).get(BEST_CHECKPOINT_KEY)
        candidates = [run_dir / recorded] if recorded else sorted((run_dir / "checkpoints").glob("epoch*.ckpt"))
    else:
        if not Path(which).is_file():
            problem = "is a folder, not a checkpoint file" if Path(which).is_dir() else "no such file"
            raise ConfigError(f"checkpoint={str(which)[:200]}: {problem}; use best, last or the path of a .ckpt file")
        candidates = [Path(which)]
    if len(candidates) != 1 or not candidates[0].is_file():
        found = ", ".join(str(path) for path in candidates) or "none"
        raise ConfigError(f"{run_dir}: cannot find the {which!r} checkpoint (found: {found:.200}); {checkpoint_remedy(run_dir)}")
    return candidates[0]


def checkpoint_remedy(run_dir: Path) -> str:
    """What to pass instead, naming only a checkpoint the folder holds: advice to use a missing file is no advice."""
    checkpoints = run_dir / "checkpoints"
    if (checkpoints / "last.ckpt").is_file():
        return CHECKPOINT_REMEDY
    found = sorted(path for path in checkpoints.glob("*.ckpt") if path.is_file()) if checkpoints.is_dir() else []
    if found:
        return f"pass checkpoint={str(found[-1])[:200]}"
    return "the run holds no checkpoint (it was stopped before its first validation): train it again"


def read_run_metrics(run_dir: str | Path, remedy: str = "retrain the run or restore the file") -> dict[str, Any]:
    """metrics.json as a dict ({} when the run has none), or one line naming the file and `remedy`.

    The file is untrusted: it must be a JSON object of at most 1 MiB, and its `best_checkpoint`, if
    present, a relative path to a file inside `<run_dir>/checkpoints/` (a crafted one could point
    evaluate or recommend at any file on the machine).
    """
    path = Path(run_dir) / "metrics.json"
    if not path.exists():
        return {}

    def damaged(detail: str) -> ConfigError:
        return ConfigError(f"{path}: metrics.json is damaged ({detail}); {remedy}")

    if not path.is_file() or path.stat().st_size > METRICS_LIMIT:
        raise damaged("not a regular file of at most 1 MiB")
    try:
        recorded = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError, RecursionError) as error:  # JSONDecodeError is a ValueError
        raise damaged(f"not valid JSON: {first_line(error, 120)}") from error
    if not isinstance(recorded, dict):
        raise damaged(f"a JSON {type(recorded).__name__}, not an object")
    best = recorded.get(BEST_CHECKPOINT_KEY)
    if best is not None and not _names_a_checkpoint_inside(best, Path(run_dir)):
        raise damaged(f"{BEST_CHECKPOINT_KEY} is {str(best)[:80]!r}, not the name of a file in checkpoints/")
    return recorded


def _names_a_checkpoint_inside(value: Any, run_dir: Path) -> bool:
    if not isinstance(value, str) or not value or ".." in Path(value).parts or Path(value).is_absolute():
        return False
    folder = (run_dir / "checkpoints").resolve()
    return Path(value).parts[0] == "checkpoints" and (run_dir / value).resolve().parent == folder


def load_checkpoint(path: str | Path, device: Any = "cpu") -> dict[str, Any]:
    """`torch.load(weights_only=True)`: tensors and plain containers only, so loading cannot run code.

    Every reader of a checkpoint comes here (serving, evaluate, resume, Lightning's own restore through
    checkpoint_io), so a file costs no more memory than its size: its zip directory is checked before
    torch reads it, and its tensors after. What comes back is still untrusted: it is a mapping of this
    code's format version with a `state_dict` of tensors, and nothing in it is built before
    `checked_module_hyper_parameters` or `checked_component` has passed it.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise ConfigError(f"{path}: empty file (0 bytes), not a checkpoint; it was cut off while being written")
    check_archive(path)
    try:
        # Sparse tensors (closed-form models keep the training matrix) are checked as they load: a crafted
        # index out of range would otherwise read or write outside the tensor's memory later.
        with torch.sparse.check_sparse_tensor_invariants():
            checkpoint = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as error:
        raise ConfigError(
            f"{path}: refused, it holds pickled objects beyond tensors and plain data, or is not a checkpoint at all "
            f"({first_line(error, 120)})"
        ) from error
    except Exception as error:  # torch reports truncated or foreign files as RuntimeError, EOFError, ValueError, ...
        raise ConfigError(f"{path}: not a readable checkpoint, it may be truncated ({first_line(error, 120)})") from error
    foreign = ConfigError(f"{path}: not a training checkpoint of this project (no state_dict of tensors)")
    if not isinstance(checkpoint, dict):
        raise foreign
    check_format(checkpoint, path)
    unknown = sorted(str(key) for key in checkpoint if key not in CHECKPOINT_KEYS)
    if unknown:
        raise ConfigError(
            f"{path}: refused, it holds the key {quote(unknown[0], 80)}, which no checkpoint of this project has; the file was altered"
        )
    state_dict = checkpoint.get("state_dict")
    if not isinstance(state_dict, dict) or not all(isinstance(value, torch.Tensor) for value in state_dict.values()):
        raise foreign
    overstated = _first_overstated_tensor(checkpoint)
    if overstated is not None:
        raise ConfigError(
            f"{path}: refused, its tensor {overstated} claims more elements than the file stores (a stride-0 view); the file was altered"
        )
    return checkpoint


def check_archive(path: Path) -> None:
    """The zip directory of a torch checkpoint, read before torch reads any of it: only the records torch
    writes, none compressed (torch never compresses, and a deflated run of zeros is a bomb: 4.7 MB on
    disk, gigabytes in memory), each stored once, so what torch reads adds up to at most the file's size."""
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
        raise ConfigError(f"{path}: not a readable checkpoint, it may be truncated ({first_line(error, 120)})") from error

    def refused(detail: str) -> ConfigError:
        return ConfigError(f"{path}: refused, {detail}; torch never writes that, the file was altered")

    folders = {entry.filename.split("/", 1)[0] for entry in entries}
    for entry in entries:
        if not TORCH_RECORD.fullmatch(entry.filename) or len(folders) != 1:
            raise refused(f"its zip holds {quote(entry.filename, 80)}, not a record of a torch checkpoint")
        if entry.compress_type != zipfile.ZIP_STORED or entry.compress_size != entry.file_size:
            sizes = f"{entry.file_size:,} bytes from {entry.compress_size:,}"
            raise refused(f"its zip entry {quote(entry.filename, 80)} is compressed ({sizes})")
    if len({entry.filename for entry in entries}) != len(entries):
        raise refused("its zip lists a record twice")
    stored = sum(entry.file_size for entry in entries)
    if stored > path.stat().st_size:
        raise refused(f"its zip entries add up to {stored:,} bytes, more than the file's {path.stat().st_size:,}")


def _first_overstated_tensor(checkpoint: dict[str, Any]) -> str | None:
    """Where a tensor has more elements than its storage holds bytes for (a view with stride 0, which
    torch.load rebuilds as recorded): copying it, as loading weights into a model does, would allocate
    its full size. Walked without recursion, so a deeply nested crafted container cannot overflow it."""
    pending: list[tuple[str, Any]] = [("", checkpoint)]
    while pending:
        where, node = pending.pop()
        if isinstance(node, dict):
            pending.extend((f"{where}[{quote(key, 40)}]", value) for key, value in node.items())
        elif isinstance(node, (list, tuple)):
            pending.extend((f"{where}[{index}]", value) for index, value in enumerate(node))
        elif isinstance(node, torch.Tensor) and not node.is_sparse:
            if node.numel() * node.element_size() > node.untyped_storage().nbytes():
                return where
        elif isinstance(node, torch.Tensor):
            pending += [(f"{where}.indices", node._indices()), (f"{where}.values", node._values())]
    return None


def first_non_finite(weights: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor holding NaN or an infinity (a sparse one: in its
    stored values), or None; such weights would score every item NaN."""
    for name, value in weights.items():
        values = value.coalesce().values() if value.is_sparse else value
        if values.is_floating_point() and not torch.isfinite(values).all():
            return name
    return None


def check_format(checkpoint: dict[str, Any], path: str | Path) -> None:
    """One line unless `checkpoint` carries this code's format version (an int: `True` and `1.0` are refused too)."""
    found = checkpoint.get(FORMAT_KEY)
    if type(found) is int and found == FORMAT_VERSION:
        return
    shown = "no format marker" if FORMAT_KEY not in checkpoint else f"format {quote(found, 40)}"
    raise ConfigError(
        f"{path}: checkpoint has {shown}, this code reads format {FORMAT_VERSION}; "
        "retrain the run or use the version of recsys_lightning that wrote it"
    )


def catalogue_from_checkpoint(state: Any, path: str | Path, resolve: bool = True) -> Catalogue | CatalogueReference:
    """The checkpoint's catalogue, refused with one line when it is from another version or malformed.

    A run trained on several ranks records the prepared folder it read instead (`PREPARED_KEY`): with
    `resolve`, its catalogue is rebuilt from that folder (every part read) once its manifest is the one
    recorded; without, the checked reference is returned (what a resume on several ranks compares)."""
    if isinstance(state, dict) and set(state) == {"version", PREPARED_KEY}:
        return _prepared_catalogue(state, path, resolve)
    if not isinstance(state, dict) or type(state.get("version")) is not int or state["version"] != STATE_VERSION:
        found = state.get("version") if isinstance(state, dict) else type(state).__name__
        raise ConfigError(
            f"{path}: its serving catalogue is version {found!r:.40}, this code reads version {STATE_VERSION}; "
            "retrain the run with this version"
        )
    try:
        return Catalogue.from_state(state)
    except MalformedCatalogue as error:
        raise ConfigError(f"{path}: its serving catalogue is malformed ({error}); the file was altered") from error


def _prepared_catalogue(state: dict[str, Any], path: str | Path, resolve: bool) -> Catalogue | CatalogueReference:
    """The catalogue of the prepared folder `state` names: one line if the reference is malformed, the
    folder is gone, or its manifest is not the one the run was trained on."""
    reference = state[PREPARED_KEY]
    if type(state["version"]) is not int or state["version"] != STATE_VERSION:
        raise ConfigError(f"{path}: its serving catalogue is version {state['version']!r:.40}, this code reads version {STATE_VERSION}")
    if not isinstance(reference, dict) or set(reference) != {"path", "manifest_sha256"} or not all(map(_is_text, reference.values())):
        raise ConfigError(f"{path}: its reference to the prepared data is not a path and a manifest_sha256; the file was altered")
    folder_path = Path(reference["path"])
    if not (folder_path / MANIFEST).is_file():
        raise ConfigError(
            f"{path}: trained on the prepared folder {cut(str(folder_path), 200)}, which holds no {MANIFEST} any more; "
            "restore the folder at that path (serving reads its ids and seen items from it)"
        )
    folder = PreparedFolder.open(folder_path)
    if folder.manifest_sha256 != reference["manifest_sha256"]:
        raise ConfigError(
            f"{path}: trained on the prepared folder {cut(str(folder_path), 200)}, but its {MANIFEST} changed since "
            "(another prepare wrote it); restore the folder the run was trained on"
        )
    return folder.catalogue() if resolve else CatalogueReference.from_source(folder)


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def recorded_catalogue(
    checkpoint: dict[str, Any], path: str | Path, remedy: str, where: str = "", resolve: bool = True
) -> Catalogue | CatalogueReference:
    """The catalogue `checkpoint` records: the ids and training pairs it was trained on, without which nothing can
    tell its data from another's. One line naming `where` (by default the file) and `remedy` when it has none.
    `resolve`: see `catalogue_from_checkpoint`."""
    if CATALOGUE_KEY not in checkpoint:
        raise ConfigError(
            f"{where or path}: carries no record of the data it was trained on (no catalogue: an older version wrote it); {remedy}"
        )
    return catalogue_from_checkpoint(checkpoint[CATALOGUE_KEY], path, resolve)


def with_held_tables(checkpoint: dict[str, Any], path: str | Path, hyper_parameters: dict[str, Any]) -> None:
    """Add to `checkpoint`'s state dict the row tables a trainer=sharded run keeps beside it (`tables_folder`,
    one file per rank of the run), read whole at any number of ranks it was saved at: evaluate, recommend and
    export serve it in one process. Each table is bounded by the shape the checked `hyper_parameters` give it
    (built on the meta device), never by the files. A checkpoint with no such folder is left as it is."""
    from recsys_lightning.models.base import build_recommender
    from recsys_lightning.sharded.checkpoint import load_sharded_tables
    from recsys_lightning.sharded.tables import WIDTH_MULTIPLE, table_key

    folder = tables_folder(path, save_id_of(checkpoint, path))
    with torch.device("meta"):
        model = build_recommender(hyper_parameters["model"], hyper_parameters["num_users"], hyper_parameters["num_items"])
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    shapes = {names[id(table)]: tuple(table.shape) for table in model.shardable_tables()}
    state_dict = checkpoint["state_dict"]
    if not folder.is_dir():
        # A sharded run's .ckpt without its tables: a warm start (partial by design) would take what is left, unsaid.
        if shapes and not any(f"model.{name}" in state_dict for name in shapes):
            raise ConfigError(
                f"{path}: holds none of its model's row tables ({', '.join(sorted(shapes))}), and no {folder.name} folder "
                "beside it, where a trainer=sharded run keeps them; restore that folder, or train the run again"
            )
        return
    twice = next((name for name in shapes if f"model.{name}" in state_dict), None)
    if twice is not None:
        raise ConfigError(f"{path}: holds model.{twice}, which {folder.name} beside it holds too; the files were altered")
    # FBGEMM stores a table's rows in a multiple of 4 columns (a bias 4 wide): the columns past `dim` are zeros.
    keys = {name: f"{table_key(name)}.embeddings.{table_key(name)}.weight" for name in shapes}
    stored = {keys[name]: (rows, -(-dim // WIDTH_MULTIPLE) * WIDTH_MULTIPLE) for name, (rows, dim) in shapes.items()}
    tables = load_sharded_tables(folder, stored)
    for name, (rows, dim) in shapes.items():
        table = tables[keys[name]]
        if tuple(table.shape) != stored[keys[name]]:
            raise ConfigError(
                f"{folder}: its table {name} is {tuple(table.shape)}, the run's model has {rows} x {dim}; the files were altered"
            )
        state_dict[f"model.{name}"] = table[:, :dim].contiguous()
