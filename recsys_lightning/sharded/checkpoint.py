"""A sharded model's weights on disk: one file per rank through `torch.distributed.checkpoint` (DCP), read
back at any number of ranks, one plain process included, as plain tensors or the rows one rank holds.

Saving is DCP's own writer (TorchRec's DistributedModelParallel hands ShardedTensor tables, DCP writes each
rank's rows to `__<rank>_0.distcp` and rank 0 the `.metadata` index), into a hidden folder beside the target
renamed over it at the end, as runs/atomic.py does for files: a crash leaves the previous checkpoint or none.

Reading is ours, because the folder is untrusted and DCP's reader trusts it: `.metadata` is a pickle that
`FileSystemReader.read_metadata` reads with `pickle.load` (torch 2.13), so a crafted folder would run code,
and the index then names files by relative path (`../` anywhere) and byte ranges that size reads. Here the
pickle is read by an unpickler that builds only DCP's metadata classes, `torch.Size` and float dtypes; every
tensor, size, row block and file range in it is checked against the model's shapes (never a size from the
file: rows and dims at most what the caller's model has, dims at most MAX_WIDTH) and against the files the
folder holds before anything is allocated; each block is read with `torch.load(weights_only=True)` after its
zip directory is checked, and must have exactly the shape and dtype the index says.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import shutil
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PosixPath
from typing import Any, BinaryIO

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import Tensor
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.tensor import DTensor

from recsys_lightning.errors import ConfigError, cut, first_line, quote
from recsys_lightning.ranges import MAX_WIDTH
from recsys_lightning.runs.atomic import WriteFailed, write_failure
from recsys_lightning.runs.checkpoint_file import TORCH_RECORD

METADATA = ".metadata"
SHARD_FILE = re.compile(r"__[0-9]{1,6}_[0-9]{1,6}\.distcp")  # DCP's FileSystemWriter: one per rank
METADATA_LIMIT = 64 << 20  # bytes; an index of a few thousand row blocks is well under a megabyte
TABLE_DTYPES = {dtype: str(dtype).removeprefix("torch.") for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16)}
# What `.metadata` may build: DCP's dataclasses and what their fields hold, nothing that runs code.
_METADATA_GLOBALS = {
    ("torch.distributed.checkpoint.metadata", name): getattr(dcp_metadata, name)
    for name in ("Metadata", "MetadataIndex", "ChunkStorageMetadata", "TensorStorageMetadata", "TensorProperties", "StorageMeta")
}
_METADATA_GLOBALS |= {
    ("torch.distributed.checkpoint.metadata", "_MEM_FORMAT_ENCODING"): dcp_metadata._MEM_FORMAT_ENCODING,
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"): _StorageInfo,
    ("torch", "Size"): torch.Size,
    ("torch.serialization", "_get_layout"): torch.serialization._get_layout,
    ("pathlib", "PosixPath"): PosixPath,  # StorageMeta.checkpoint_id, the folder it was saved to: ignored
    **{("torch", name): dtype for dtype, name in TABLE_DTYPES.items()},
}


class CheckpointRefused(ConfigError):
    """A sharded checkpoint folder that is incomplete, altered or not one this code wrote."""


def save_sharded(state_dict: Mapping[str, Tensor], folder: str | Path, group: dist.ProcessGroup | None = None) -> None:
    """Every rank calls it with its model's state dict (ShardedTensor or DTensor tables, plain dense tensors);
    `folder` (the same path on every rank: a shared filesystem across hosts) appears complete or not at all."""
    folder = Path(folder)
    not_tensors = [name for name, value in state_dict.items() if not isinstance(value, Tensor)]
    if not_tensors:  # DCP would pickle them, and no reader here unpickles data
        raise ValueError(f"save_sharded takes tensors only; {not_tensors[0]!r} is a {type(state_dict[not_tensors[0]]).__name__}")
    distributed = dist.is_available() and dist.is_initialized()
    leader = not distributed or dist.get_rank(group) == 0
    hidden = folder.with_name(f".{folder.name}.partial")
    failure = ""
    if leader:
        failure = _attempt(folder, lambda: _fresh_folder(hidden))
    failure = _agreed(failure, distributed, group)
    if not failure:
        _write(state_dict, hidden, folder, leader, distributed, group)
        if leader:
            failure = _attempt(folder, lambda: _publish(hidden, folder))
        failure = _agreed(failure, distributed, group)
    if failure:
        raise WriteFailed(failure)


def _write(
    state_dict: Mapping[str, Tensor], hidden: Path, folder: Path, leader: bool, distributed: bool, group: dist.ProcessGroup | None
) -> None:
    """DCP's save into `hidden`; a write the system refused on any rank (DCP gathers them) is one line on every rank."""
    try:
        with warnings.catch_warnings():  # DCP warns that one process saves alone, which is what was asked
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.save(dict(state_dict), storage_writer=dcp.FileSystemWriter(hidden), process_group=group, no_dist=not distributed)
    except dcp.CheckpointException as error:
        if leader:
            shutil.rmtree(hidden, ignore_errors=True)
        refused = [cause for cause, _ in error.failures.values() if isinstance(cause, OSError)]
        if refused:
            raise write_failure(folder, refused[0]) from error
        raise


def load_sharded_tables(
    folder: str | Path, max_shapes: Mapping[str, Sequence[int]], row_ranges: Mapping[str, tuple[int, int]] | None = None
) -> dict[str, Tensor]:
    """The checkpoint's tensors as plain CPU tensors, at any number of ranks: whole, or for a name in
    `row_ranges` only rows [start, stop) (the block a rank holds in another layout). `max_shapes` are the
    model's shapes: each tensor must be listed, with as many dims, each no larger, and every listed one present.
    """
    folder = Path(folder)
    index = read_index(folder, max_shapes)
    tables = {}
    for name, entry in index.items():
        start, stop = (row_ranges or {}).get(name, (0, entry.size[0] if entry.size else 0))
        if not 0 <= start <= stop <= (entry.size[0] if entry.size else 0):
            raise ValueError(f"rows {start}..{stop} of {name!r}, which has {entry.size[0] if entry.size else 0}")
        tables[name] = _read_rows(folder, name, entry, start, stop) if entry.size else _read_block(folder, name, entry.blocks[0], entry)
    return tables


def load_into(state_dict: Mapping[str, Tensor], folder: str | Path) -> None:
    """Fill a model's state dict from a checkpoint saved at any number of ranks (resharding): each row-wise
    ShardedTensor gets the rows this rank holds, each plain tensor all of it. The model's own shapes bound
    every read. Every rank calls it, or one process with a plain state dict."""
    ranges, targets = {}, {}
    for name, value in state_dict.items():
        if isinstance(value, ShardedTensor):
            shards = value.local_shards()
            if len(shards) > 1 or any(offset != 0 for shard in shards for offset in shard.metadata.shard_offsets[1:]):
                raise ValueError(f"{name!r} is not sharded row-wise (one block of whole rows per rank)")
            first_row = shards[0].metadata.shard_offsets[0] if shards else 0
            ranges[name] = (first_row, first_row + (len(shards[0].tensor) if shards else 0))
            targets[name] = shards[0].tensor if shards else None
        elif isinstance(value, DTensor):
            raise ValueError(f"{name!r} is a DTensor; TorchRec's row-wise tables are ShardedTensors, which this reads")
        else:
            targets[name] = value
    tables = load_sharded_tables(folder, {name: tuple(value.shape) for name, value in state_dict.items()}, ranges)
    with torch.no_grad():
        for name, target in targets.items():
            if target is not None:
                target.copy_(tables[name])


@dataclass(frozen=True)
class Block:
    """One stored block of rows [first_row, first_row + rows) and where its bytes are."""

    first_row: int
    rows: int
    file: str
    offset: int
    length: int


@dataclass(frozen=True)
class StoredTensor:
    size: tuple[int, ...]
    dtype: torch.dtype
    blocks: tuple[Block, ...]  # by first row, covering every row once


def read_index(folder: Path, max_shapes: Mapping[str, Sequence[int]]) -> dict[str, StoredTensor]:
    """`.metadata` read without running code and checked against `max_shapes` and the folder's files."""
    if not folder.is_dir():
        raise CheckpointRefused(f"{cut(str(folder), 200)}: no such checkpoint folder; point it at the folder a sharded run saved")
    _check_no_links(folder)
    path = folder / METADATA
    if not path.is_file():
        raise CheckpointRefused(f"{path}: missing; the checkpoint is incomplete or not a sharded checkpoint, save it again")
    if path.stat().st_size > METADATA_LIMIT:
        raise _altered(path, f"it is {path.stat().st_size:,} bytes, more than {METADATA_LIMIT:,}")
    try:
        metadata = _MetadataUnpickler(io.BytesIO(path.read_bytes())).load()
    except Exception as error:  # a refused global, a truncated stream, a __setstate__ given junk
        raise _altered(path, f"it is not DCP metadata ({first_line(error, 120)})") from error
    # Fields are read with getattr: an object the unpickler built without its state has none of them.
    tensors = getattr(metadata, "state_dict_metadata", None)
    if not isinstance(metadata, dcp_metadata.Metadata) or not isinstance(tensors, dict):
        raise _altered(path, "it holds no DCP Metadata")
    storage = _storage_by_block(path, getattr(metadata, "storage_data", None))
    index = {}
    for name, stored in tensors.items():
        if name not in max_shapes:
            raise CheckpointRefused(
                f"{path}: holds the tensor {quote(name, 80)}, which the model has not; it is another model's checkpoint"
            )
        index[name] = _checked_tensor(path, name, stored, tuple(max_shapes[name]), storage)
    missing = sorted(set(max_shapes) - set(index))
    if missing:
        raise CheckpointRefused(f"{path}: lacks the tensor {quote(missing[0], 80)} of the model; it is another model's checkpoint")
    if set(storage) - {(name, block.first_row) for name, entry in index.items() for block in entry.blocks}:
        raise _altered(path, "it lists stored blocks of no tensor")
    _check_files(folder, [block for entry in index.values() for block in entry.blocks])
    return index


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        allowed = _METADATA_GLOBALS.get((module, name))
        if allowed is None:
            raise pickle.UnpicklingError(f"refused global {cut(module, 60)}.{cut(name, 60)}")
        return allowed


def _altered(path: Path, detail: str) -> CheckpointRefused:
    return CheckpointRefused(f"{path}: refused, {detail}; DCP never writes that, the checkpoint was altered: save it again")


def _sizes(value: Any) -> tuple[int, ...] | None:
    if not isinstance(value, (tuple, list)) or len(value) > 8 or not all(type(size) is int and size >= 0 for size in value):
        return None
    return tuple(value)


def _storage_by_block(path: Path, storage_data: Any) -> dict[tuple[str, int], _StorageInfo]:
    if not isinstance(storage_data, dict):
        raise _altered(path, "its storage index is not a mapping")
    storage = {}
    for key, info in storage_data.items():
        offsets, fqn = _sizes(getattr(key, "offset", None)), getattr(key, "fqn", None)
        if (
            not isinstance(key, dcp_metadata.MetadataIndex)
            or not isinstance(fqn, str)
            or offsets is None
            or not isinstance(info, _StorageInfo)
        ):
            raise _altered(path, "its storage index holds an entry that is not DCP's")
        first_row = offsets[0] if offsets else 0  # a 0-dim tensor is one block at row 0
        if (fqn, first_row) in storage:
            raise _altered(path, f"it stores rows {first_row}.. of {quote(fqn, 80)} twice")
        storage[(fqn, first_row)] = info
    return storage


def _checked_tensor(
    path: Path, name: str, stored: Any, max_shape: tuple[int, ...], storage: dict[tuple[str, int], _StorageInfo]
) -> StoredTensor:
    """A tensor's entry: no larger than the model's, in row blocks of whole rows that cover it exactly once."""
    what = f"the tensor {quote(name, 80)}"
    properties, stored_size, stored_chunks = (getattr(stored, field, None) for field in ("properties", "size", "chunks"))
    dtype = getattr(properties, "dtype", None)
    if not isinstance(stored, dcp_metadata.TensorStorageMetadata) or not isinstance(properties, dcp_metadata.TensorProperties):
        raise _altered(path, f"{what} is not stored as a tensor")
    size = _sizes(stored_size)
    if (
        size is None
        or len(size) != len(max_shape)
        or any(have > bound for have, bound in zip(size, max_shape))
        or any(dim > MAX_WIDTH for dim in size[1:])
    ):
        raise CheckpointRefused(
            f"{path}: {what} is {list(size) if size is not None else 'of no size'}, the model's at most {list(max_shape)}; "
            "it is another model's checkpoint, or altered"
        )
    if not isinstance(dtype, torch.dtype) or dtype not in TABLE_DTYPES:
        raise _altered(path, f"{what} has the dtype {quote(str(dtype), 40)}")
    if not isinstance(stored_chunks, list):
        raise _altered(path, f"{what} lists no blocks")
    blocks, next_row = [], 0
    chunks = [
        (_sizes(getattr(chunk, "offsets", None)), _sizes(getattr(chunk, "sizes", None)))
        for chunk in stored_chunks
        if isinstance(chunk, dcp_metadata.ChunkStorageMetadata)
    ]
    if len(chunks) != len(stored_chunks) or any(offsets is None or sizes is None for offsets, sizes in chunks):
        raise _altered(path, f"{what} lists a block that is not DCP's")
    for offsets, sizes in sorted(chunks, key=lambda chunk: chunk[0][:1]):
        whole_rows = len(offsets) == len(sizes) == len(size) and list(offsets[1:]) == [0] * (len(size) - 1) and sizes[1:] == size[1:]
        if not whole_rows or (size and offsets[0] != next_row) or (not size and blocks):
            raise _altered(path, f"{what} has a block at {list(offsets)} of {list(sizes)}, not the next rows of {list(size)}")
        first_row, rows = (offsets[0], sizes[0]) if size else (0, 1)
        info = storage.get((name, first_row))
        if info is None:
            raise _altered(path, f"{what} has no stored bytes for rows {first_row}..")
        block = _checked_block(path, what, first_row, rows, info)
        blocks.append(block)
        next_row = first_row + rows
    if (size and next_row != size[0]) or not blocks:
        raise _altered(path, f"the blocks of {what} end at row {next_row}, not at its {size[0] if size else 1} rows")
    return StoredTensor(size, dtype, tuple(blocks))


def _checked_block(path: Path, what: str, first_row: int, rows: int, info: _StorageInfo) -> Block:
    file, offset, length = (getattr(info, field, None) for field in ("relative_path", "offset", "length"))
    if not isinstance(file, str) or not SHARD_FILE.fullmatch(file):
        raise _altered(path, f"{what} names the file {quote(file, 80)}, not a shard file of this folder")
    if type(offset) is not int or type(length) is not int or offset < 0 or length <= 0 or getattr(info, "transform_descriptors", None):
        raise _altered(path, f"{what} is stored at bytes {quote(offset, 40)}+{quote(length, 40)} of {file}")
    return Block(first_row, rows, file, offset, length)


def _check_no_links(folder: Path) -> None:
    """A save writes its folder and files in place: a symbolic link (the folder, or a file in it) would read
    tables from wherever it points, another run's of the same shape or a file outside every run, unsaid."""
    for path in (folder, *folder.iterdir()):
        if path.is_symlink():
            raise CheckpointRefused(
                f"{cut(str(path), 200)}: a symbolic link (to {cut(str(path.readlink()), 120)}), not what a sharded save writes; "
                "copy what it points to in its place, or save the checkpoint again"
            )


def _check_files(folder: Path, blocks: list[Block]) -> None:
    """Every file the index names is there and long enough; no shard file is there that it does not name."""
    named = {block.file for block in blocks}
    present = {path.name for path in folder.iterdir() if path.name.endswith(".distcp")}
    for file in sorted(named - present):
        raise CheckpointRefused(
            f"{folder / file}: missing shard file; the checkpoint is incomplete, copy the whole folder or save it again"
        )
    for file in sorted(present - named):
        raise CheckpointRefused(
            f"{folder / file}: a shard file the checkpoint's index does not name; it belongs to another checkpoint, remove it"
        )
    for block in blocks:
        path = folder / block.file
        if not path.is_file() or path.stat().st_size < block.offset + block.length:
            size = path.stat().st_size if path.is_file() else 0
            raise CheckpointRefused(
                f"{path}: {size:,} bytes, shorter than the {block.offset + block.length:,} the index needs; it was cut off, save again"
            )


def _read_rows(folder: Path, name: str, entry: StoredTensor, start: int, stop: int) -> Tensor:
    """Rows [start, stop): the stored block itself when it is exactly those rows, else copied from each
    block they overlap, one block at a time (at most the result and one block in memory)."""
    exact = [block for block in entry.blocks if (block.first_row, block.first_row + block.rows) == (start, stop)]
    if exact:
        return _read_block(folder, name, exact[0], entry)
    rows = torch.empty((stop - start, *entry.size[1:]), dtype=entry.dtype)  # sized by the model's shapes, checked above
    for block in entry.blocks:
        low, high = max(start, block.first_row), min(stop, block.first_row + block.rows)
        if low < high:
            stored = _read_block(folder, name, block, entry)
            rows[low - start : high - start] = stored[low - block.first_row : high - block.first_row]
    return rows


def _read_block(folder: Path, name: str, block: Block, entry: StoredTensor) -> Tensor:
    """One block's tensor, read from its byte range with weights_only, exactly the shape and dtype listed.
    torch reads the range in place (no copy of its bytes first), so a block costs its size once."""
    path = folder / block.file
    where = f"{path}: refused, the bytes {block.offset:,}+{block.length:,} of {quote(name, 80)}"
    with path.open("rb") as handle:
        _check_zip(FileRange(handle, block.offset, block.length), block.length, where)
        try:
            tensor = torch.load(FileRange(handle, block.offset, block.length), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise CheckpointRefused(
                f"{where} hold pickled objects beyond a tensor ({first_line(error, 120)}); the file was altered"
            ) from error
        except Exception as error:  # torch reports a damaged record as RuntimeError, EOFError, ...
            raise CheckpointRefused(f"{where} are not a readable tensor ({first_line(error, 120)}); the file was altered or cut") from error
    shape = (block.rows, *entry.size[1:]) if entry.size else ()
    if not isinstance(tensor, Tensor) or tuple(tensor.shape) != shape or tensor.dtype != entry.dtype or tensor.layout != torch.strided:
        found = f"{tuple(tensor.shape)} {tensor.dtype}" if isinstance(tensor, Tensor) else type(tensor).__name__
        raise CheckpointRefused(f"{where} hold {found}, not the {shape} {entry.dtype} its index lists; the file was altered")
    return tensor.contiguous()  # a stored view (stride 0, an offset) becomes rows of its own, at most the listed size


class FileRange(io.RawIOBase):
    """Bytes [offset, offset + length) of an open file as a file of their own: what zipfile and torch.load
    see of one stored block, never a byte outside it."""

    def __init__(self, handle: BinaryIO, offset: int, length: int) -> None:
        super().__init__()
        self.handle, self.offset, self.length, self.position = handle, offset, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, position: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.length}[whence]
        self.position = max(0, base + position)
        return self.position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        wanted = max(0, min(len(view), self.length - self.position))
        self.handle.seek(self.offset + self.position)
        read = self.handle.readinto(view[:wanted]) or 0
        self.position += read
        return read


def _check_zip(data: BinaryIO, length: int, where: str) -> None:
    """As runs/checkpoint_file.check_archive: torch's records only, stored uncompressed, adding up to at most the bytes read."""
    try:
        with zipfile.ZipFile(data) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, ValueError, EOFError, OSError) as error:
        raise CheckpointRefused(f"{where} are not a torch record ({first_line(error, 120)}); the file was altered or cut") from error
    folders = {entry.filename.split("/", 1)[0] for entry in entries}
    bad = [entry for entry in entries if not TORCH_RECORD.fullmatch(entry.filename) or entry.compress_type != zipfile.ZIP_STORED]
    if bad or len(folders) != 1 or sum(entry.file_size for entry in entries) > length:
        raise CheckpointRefused(f"{where} hold a zip torch never writes; the file was altered")


def _fresh_folder(hidden: Path) -> None:
    shutil.rmtree(hidden, ignore_errors=True)  # what a crashed save left
    hidden.mkdir(parents=True)


def _publish(hidden: Path, folder: Path) -> None:
    """The complete hidden folder becomes `folder`; a checkpoint already there is moved aside first (a
    folder cannot be renamed over a full one), so a crash in between leaves the old one in `.<name>.old`."""
    previous = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(previous, ignore_errors=True)
    if folder.exists():
        os.replace(folder, previous)
    os.replace(hidden, folder)
    descriptor = os.open(folder.parent, os.O_RDONLY)
    try:
        os.fsync(descriptor)  # the renames themselves reach the disk
    finally:
        os.close(descriptor)
    shutil.rmtree(previous, ignore_errors=True)


def _attempt(folder: Path, step: Any) -> str:
    """'' when `step` ran, else the one line for the write the system refused."""
    try:
        step()
    except OSError as error:
        return str(write_failure(folder, error))
    return ""


def _agreed(failure: str, distributed: bool, group: dist.ProcessGroup | None) -> str:
    """Rank 0's outcome on every rank, so all raise or all go on together (no rank left in a collective)."""
    if not distributed:
        return failure
    shared = [failure]
    dist.broadcast_object_list(shared, src=dist.get_global_rank(group, 0) if group is not None else 0, group=group)
    return shared[0]
