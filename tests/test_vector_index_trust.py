"""A FAISS index file is reused only when it provably holds the vectors being served: another run's
index at the same path, a damaged file or sidecar, or changed settings make it rebuilt, never served."""

import hashlib
import io
import json
import logging
import os
import shutil

import numpy as np
import pytest
import torch

from recsys_lightning.config import register_resolvers
from recsys_lightning.errors import ConfigError
from recsys_lightning.recommend import serve
from recsys_lightning.serving import vector_index
from recsys_lightning.serving.arguments import check_serving_config
from recsys_lightning.serving.vector_index import ItemVectorIndex, check_nlist, open_or_build

from helpers import compose_config, quiet_trainer

pytest.importorskip("faiss")
register_resolvers()


def vectors(num_items: int = 50, dim: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(num_items, dim, generator=torch.Generator().manual_seed(seed))


def exact_top(item_vectors: torch.Tensor, queries: torch.Tensor, k: int = 5) -> torch.Tensor:
    return torch.topk(queries @ item_vectors.T, k).indices


def write_bytes(path, data: bytes):
    path.write_bytes(data)
    return path


def sidecar(path) -> dict:
    return json.loads((path.parent / f"{path.name}.json").read_text())


def rebuilt(caplog, path, item_vectors, **settings) -> ItemVectorIndex:
    """open_or_build that must have built (and written) the index, not loaded it."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=vector_index.__name__):
        index = open_or_build(item_vectors, path, **settings)
    assert any("wrote the" in message for message in caplog.messages), caplog.messages
    assert not any("loaded the" in message for message in caplog.messages), caplog.messages
    return index


def test_another_runs_index_of_the_same_width_is_rebuilt_and_serves_this_runs_items(tmp_path, caplog):
    path = tmp_path / "items.faiss"
    run_a, run_b, queries = vectors(seed=0), vectors(seed=1), vectors(num_items=7, seed=2)
    open_or_build(run_a, path)
    index = rebuilt(caplog, path, run_b)
    assert "built from other item vectors or settings (vectors_sha256 differ)" in caplog.text
    assert torch.equal(index.search(queries, 5)[1], exact_top(run_b, queries))
    assert torch.equal(ItemVectorIndex.load(path).search(queries, 5)[1], exact_top(run_b, queries))
    assert sidecar(path)["vectors_sha256"] == hashlib.sha256(run_b.numpy().tobytes()).hexdigest()


def test_another_item_count_is_rebuilt(tmp_path, caplog):
    path = tmp_path / "items.faiss"
    open_or_build(vectors(num_items=50), path)
    index = rebuilt(caplog, path, vectors(num_items=60))
    assert index.num_items == 60 and "num_items, vectors_sha256 differ" in caplog.text
    assert (sidecar(path)["num_items"], sidecar(path)["dim"]) == (60, 8)


def test_the_same_vectors_and_settings_reuse_the_file_untouched(tmp_path, caplog):
    path = tmp_path / "items.faiss"
    item_vectors, queries = vectors(), vectors(num_items=3, seed=5)
    open_or_build(item_vectors, path, kind="ivf", nlist=4, nprobe=4)
    written = path.stat().st_mtime_ns, path.stat().st_ino
    with caplog.at_level(logging.INFO, logger=vector_index.__name__):
        index = open_or_build(item_vectors.clone(), path, kind="ivf", nlist=4, nprobe=4)
    assert "loaded the ivf index" in caplog.text and "rebuild" not in caplog.text
    assert (path.stat().st_mtime_ns, path.stat().st_ino) == written
    assert index.index.nprobe == 4 and torch.equal(index.search(queries, 5)[1], exact_top(item_vectors, queries))


@pytest.mark.parametrize(
    ("first", "second", "changed"),
    [
        ({"kind": "flat"}, {"kind": "ivf", "nlist": 4}, "kind, nlist, seed"),
        ({"kind": "ivf", "nlist": 4}, {"kind": "ivf", "nlist": 5}, "nlist"),
    ],
    ids=["kind", "nlist"],
)
def test_other_settings_are_rebuilt(tmp_path, caplog, first, second, changed):
    path = tmp_path / "items.faiss"
    open_or_build(vectors(), path, **first)
    rebuilt(caplog, path, vectors(), **second)
    assert f"({changed} differ)" in caplog.text


def test_a_garbage_or_replaced_index_file_is_rebuilt(tmp_path, caplog):
    path = tmp_path / "items.faiss"
    item_vectors, queries = vectors(), vectors(num_items=4, seed=3)
    open_or_build(item_vectors, path)
    path.write_bytes(b"garbage" * 100)
    index = rebuilt(caplog, path, item_vectors)
    assert "items.faiss changed since items.faiss.json was written" in caplog.text
    assert torch.equal(index.search(queries, 5)[1], exact_top(item_vectors, queries))
    # Another run's index copied over the file (same width) is caught by the file's own hash too.
    open_or_build(vectors(seed=9), tmp_path / "other.faiss")
    path.write_bytes((tmp_path / "other.faiss").read_bytes())
    rebuilt(caplog, path, item_vectors)
    assert torch.equal(ItemVectorIndex.load(path).search(queries, 5)[1], exact_top(item_vectors, queries))


def test_an_index_faiss_cannot_parse_is_rebuilt_even_with_a_matching_sidecar(tmp_path, caplog):
    path = tmp_path / "items.faiss"
    open_or_build(vectors(), path)
    path.write_bytes(b"garbage" * 100)
    recorded = {**sidecar(path), "index_sha256": hashlib.sha256(b"garbage" * 100).hexdigest()}
    (tmp_path / "items.faiss.json").write_text(json.dumps(recorded))
    rebuilt(caplog, path, vectors())
    assert "holds an index of unknown type b'garb', not a flat inner-product one" in caplog.text  # refused before FAISS reads it


def test_an_index_of_another_size_is_rebuilt_even_when_its_sidecar_claims_otherwise(tmp_path, caplog):
    path, other = tmp_path / "items.faiss", tmp_path / "small.faiss"
    open_or_build(vectors(num_items=50), path)
    open_or_build(vectors(num_items=40), other)
    path.write_bytes(other.read_bytes())
    forged = {**sidecar(path), "index_sha256": sidecar(other)["index_sha256"]}
    (tmp_path / "items.faiss.json").write_text(json.dumps(forged))
    assert rebuilt(caplog, path, vectors(num_items=50)).num_items == 50
    assert "holds an index of 40 vectors, not 50, though items.faiss.json records 50 vectors of width 8" in caplog.text


SIDECAR_CONTENT = {
    "missing": None,
    "empty": b"",
    "not_json": b"{not json",
    "not_utf8": b"\xff\xfe\x00",
    "not_an_object": b"[1, 2]",
    "incomplete": b'{"format": 1}',
    "a_folder": "folder",
}


@pytest.mark.parametrize("content", SIDECAR_CONTENT.values(), ids=SIDECAR_CONTENT.keys())
def test_an_index_file_without_a_sidecar_of_ours_is_refused_and_left_untouched(tmp_path, content):
    """Without a readable sidecar of ours, nothing says the file is an index this project wrote."""
    path = tmp_path / "items.faiss"
    open_or_build(vectors(), path)
    json_path = tmp_path / "items.faiss.json"
    json_path.unlink()
    if content == "folder":
        json_path.mkdir()
    elif content is not None:
        json_path.write_bytes(content)
    before = path.read_bytes()
    with pytest.raises(ConfigError) as refused:
        open_or_build(vectors(), path)
    message = str(refused.value)
    assert message.startswith(f"faiss.path={path}: refusing to overwrite items.faiss") and "\n" not in message, message
    assert message.endswith("; remove or move those files, or pick another path"), message
    why = {
        None: "(no items.faiss.json beside it)",
        b"[1, 2]": "(items.faiss.json is not an index record this project wrote)",
        b'{"format": 1}': "(items.faiss.json is not an index record",
        "folder": "(cannot read items.faiss.json: Is a directory)",
        b"{not json": "(cannot read items.faiss.json: Expecting property name",
    }.get(content, "(cannot read items.faiss.json: ")
    assert why in message, message
    assert path.read_bytes() == before


def test_a_file_that_is_not_an_index_is_never_overwritten(tmp_path):
    """A mistyped faiss.path (a user's file, a checkpoint) or a stray companion file is refused, not replaced."""
    precious = write_bytes(tmp_path / "precious.txt", b"years of notes\n")
    with pytest.raises(
        ConfigError,
        match=rf"^faiss.path={precious}: refusing to overwrite precious.txt: not an index this project "
        r"wrote \(no precious.txt.json beside it\); remove or move those files",
    ):
        open_or_build(vectors(), precious)
    # Only a companion exists: the sidecar (a user's JSON) or, when item ids are written, the items table.
    own_json = write_bytes(tmp_path / "notes.json", b'{"mine": true}')
    with pytest.raises(
        ConfigError, match=r"refusing to overwrite notes.json: not an index this project wrote \(notes.json is not an index"
    ):
        open_or_build(vectors(), tmp_path / "notes")
    table = write_bytes(tmp_path / "ids.items.csv", b"id\n1\n")
    open_or_build(vectors(), tmp_path / "ids")  # no item ids: the table is not written, so not in the way
    (tmp_path / "ids").unlink(), (tmp_path / "ids.json").unlink()
    with pytest.raises(ConfigError, match=r"refusing to overwrite ids.items.csv: not an index this project wrote \(no ids.json"):
        open_or_build(vectors(), tmp_path / "ids", item_ids=np.arange(50))
    assert (precious.read_bytes(), own_json.read_bytes(), table.read_bytes()) == (b"years of notes\n", b'{"mine": true}', b"id\n1\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ids.items.csv", "notes.json", "precious.txt"]
    os.mkfifo(tmp_path / "pipe")  # reading it would block forever
    with pytest.raises(ConfigError, match=r"faiss.path=.*pipe: is not a regular file \(a device, pipe or socket\); pick another path$"):
        open_or_build(vectors(), tmp_path / "pipe")


def test_our_sidecar_beside_a_missing_or_stale_index_means_rebuilding(tmp_path, caplog):
    path = tmp_path / "items.faiss"
    open_or_build(vectors(seed=0), path, item_ids=np.arange(50))
    path.unlink()  # a cleaned-up index: the sidecar and items table are ours, so they may be replaced
    rebuilt(caplog, path, vectors(seed=0), item_ids=np.arange(50))
    older = {**sidecar(path), "format": 0}  # an older format of ours
    (tmp_path / "items.faiss.json").write_text(json.dumps(older))
    rebuilt(caplog, path, vectors(seed=0))
    assert "(format differ); rebuilding the index" in caplog.text and sidecar(path)["format"] == vector_index.SIDECAR_FORMAT


def swapped_in(tmp_path, path, other_vectors, **settings):
    """Another run's index copied over `path`, with its hash edited into `path`'s own sidecar."""
    other = tmp_path / "other.faiss"
    open_or_build(other_vectors, other, **settings)
    path.write_bytes(other.read_bytes())
    (tmp_path / "items.faiss.json").write_text(json.dumps({**sidecar(path), "index_sha256": sidecar(other)["index_sha256"]}))


@pytest.mark.parametrize("settings", [{"kind": "flat"}, {"kind": "ivf", "nlist": 4}], ids=["flat", "ivf"])
def test_an_index_swapped_in_with_a_forged_sidecar_is_caught_by_its_vectors(tmp_path, caplog, settings):
    path, queries = tmp_path / "items.faiss", vectors(num_items=6, seed=4)
    mine = vectors(seed=0)
    open_or_build(mine, path, **settings)
    swapped_in(tmp_path, path, vectors(seed=1), **settings)
    index = rebuilt(caplog, path, mine, **settings)
    assert "items.faiss holds other item vectors than this run's, though items.faiss.json says otherwise; rebuilding" in caplog.text
    assert torch.equal(index.search(queries, 5)[1], exact_top(mine, queries))
    assert torch.equal(ItemVectorIndex.load(path, nprobe=4).search(queries, 5)[1], exact_top(mine, queries))
    with caplog.at_level(logging.INFO, logger=vector_index.__name__):
        open_or_build(mine, path, **settings)  # the true pair passes the same check
    assert "loaded the" in caplog.messages[-1]


def test_the_same_vectors_in_another_kind_of_index_are_rebuilt(tmp_path, caplog):
    """Equal vectors are not enough: an L2 index ranks them otherwise, an IVF of other lists or a flat one
    is not what the settings ask for."""
    import faiss

    path, mine = tmp_path / "items.faiss", vectors()
    open_or_build(mine, path)
    l2 = faiss.IndexFlatL2(8)
    l2.add(mine.numpy())
    path.write_bytes(faiss.serialize_index(l2).tobytes())
    (tmp_path / "items.faiss.json").write_text(json.dumps({**sidecar(path), "index_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}))
    rebuilt(caplog, path, mine)
    assert "holds a flat L2 index, not a flat inner-product one" in caplog.text
    open_or_build(mine, path, kind="ivf", nlist=4)
    swapped_in(tmp_path, path, mine, kind="ivf", nlist=5)
    rebuilt(caplog, path, mine, kind="ivf", nlist=4)
    assert "holds an IVF index of 5 lists, not 4" in caplog.text
    swapped_in(tmp_path, path, mine)
    rebuilt(caplog, path, mine, kind="ivf", nlist=4)
    assert "holds a flat inner-product index, not an IVF flat one" in caplog.text


def test_written_files_are_normal_files_and_leave_no_temporaries(tmp_path):
    path = tmp_path / "items.faiss"
    old_umask = os.umask(0o022)
    try:
        open_or_build(vectors(), path, item_ids=np.array([f"item-{i}" for i in range(50)], dtype=object))
    finally:
        os.umask(old_umask)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["items.faiss", "items.faiss.items.csv", "items.faiss.json"]
    assert {oct(p.stat().st_mode & 0o777) for p in tmp_path.iterdir()} == {"0o644"}
    assert (tmp_path / "items.faiss.items.csv").read_text().splitlines()[:2] == ["row,item_id", "0,item-0"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path, monkeypatch, caplog):
    path = tmp_path / "items.faiss"
    open_or_build(vectors(seed=0), path)
    before = path.read_bytes()

    replace = os.replace

    def disk_full_for_the_index(source, target):
        if target == path:
            raise OSError(28, "No space left on device")
        replace(source, target)

    monkeypatch.setattr(os, "replace", disk_full_for_the_index)
    with pytest.raises(ConfigError, match=r"^faiss.path: cannot write .*items.faiss \(No space left on device\); pick another path$"):
        open_or_build(vectors(seed=1), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["items.faiss", "items.faiss.json"]
    # The sidecar, written first, now names the index that never arrived: the old one is rebuilt, not served or refused.
    monkeypatch.setattr(os, "replace", replace)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=vector_index.__name__):
        open_or_build(vectors(seed=1), path)
    assert "items.faiss changed since items.faiss.json was written; rebuilding" in caplog.text
    assert torch.equal(ItemVectorIndex.load(path).search(vectors(3, seed=7), 5)[1], exact_top(vectors(seed=1), vectors(3, seed=7)))


def test_a_path_in_a_missing_folder_or_a_folder_is_one_line(tmp_path):
    missing = tmp_path / "no-such-folder" / "items.faiss"
    with pytest.raises(ConfigError, match=rf"^faiss.path={missing}: folder {missing.parent} does not exist; create it"):
        open_or_build(vectors(), missing)
    with pytest.raises(ConfigError, match=rf"^faiss.path={tmp_path}: is a folder; give a file path"):
        open_or_build(vectors(), tmp_path)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"kind": "ivf", "nlist": 0}, "faiss.nlist=0: must be an integer from 1 to 50 (the number of items)"),
        ({"kind": "ivf", "nlist": 51}, "faiss.nlist=51: must be an integer from 1 to 50"),
        ({"kind": "ivf", "nlist": 2.5}, "faiss.nlist=2.5: must be an integer from 1 to 50"),
    ],
)
def test_bad_settings_name_the_key_before_anything_is_built(tmp_path, settings, message):
    with pytest.raises(ConfigError) as caught:
        open_or_build(vectors(), tmp_path / "items.faiss", **settings)
    assert str(caught.value).startswith(message) and len(str(caught.value)) < 300, str(caught.value)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError, match="^faiss"):
        ItemVectorIndex.build(vectors(), **{"kind": "flat", **settings})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("faiss.nprobe=0", "faiss.nprobe=0: must be an integer >= 1"),
        ("faiss.nprobe=-3", "faiss.nprobe=-3: must be an integer >= 1"),
        ("faiss.nprobe=many", "faiss.nprobe=many: must be an integer >= 1"),
        ("faiss.nprobe=true", "faiss.nprobe=true: must be an integer >= 1"),
        ("faiss.kind=hnsw", "faiss.kind=hnsw: must be one of flat, ivf"),
        ("faiss.kind=" + "x" * 500, "faiss.kind=xxxx"),
    ],
)
def test_bad_kind_or_nprobe_is_refused_with_the_other_arguments(override, message):
    """kind and nprobe are held to their ranges with recommend's other arguments, before any index is read or built."""
    with pytest.raises(ConfigError) as caught:
        check_serving_config(compose_config("recommend", "run_dir=r", "user_id=1", "index=faiss", override))
    assert str(caught.value).startswith(message) and len(str(caught.value)) < 300, str(caught.value)


def test_the_default_nlist_is_valid_for_every_catalogue_size():
    sizes = (1, 2, 39, 40, 1682, 10**6)
    defaults = [vector_index._nlist(None, num_items) for num_items in sizes]
    # about 4 sqrt(items), but never fewer than 39 items a list (FAISS's minimum to train a centroid), nor under 1
    assert defaults == [1, 1, 1, 1, 43, 4000]
    for num_items, nlist in zip(sizes, defaults):
        check_nlist(nlist, num_items)  # raises ConfigError for an nlist outside [1, num_items]
    assert vector_index._nlist(7, 1682) == 7  # a nlist set by the user is kept


def train_mf(folder, seed):
    """A tiny MF checkpoint, one epoch on planted data: a stand-in for a training run."""
    import pytorch_lightning as pl

    from recsys_lightning.build import build_module

    from helpers import FrameDataModule, module_config, planted_frame

    pl.seed_everything(seed, verbose=False)
    datamodule = FrameDataModule(planted_frame(), batch_size=256, seed=seed)
    datamodule.setup("fit")
    module = build_module(module_config(seed=seed), datamodule.training_data)
    trainer = quiet_trainer(max_epochs=1, enable_checkpointing=False, limit_val_batches=0, default_root_dir=folder)
    trainer.fit(module, datamodule=datamodule)
    trainer.save_checkpoint(folder / "model.ckpt")
    return folder


def test_recommend_with_another_runs_index_at_faiss_path_serves_this_run(tmp_path):
    """Run B's checkpoint replaces run A's at the same path with A's mtime (cp -p, rsync -a, a restored
    backup): path and mtime, all the old check looked at, are the same, the vectors are not."""
    run_a, run_b = train_mf(tmp_path / "a", seed=0), train_mf(tmp_path / "b", seed=1)
    saved = tmp_path / "shared.faiss"

    def answer(run, *overrides):
        """The ranked item ids of user 3's answer (scores differ between FAISS and torch in the last digit)."""
        out = io.StringIO()
        serve(compose_config("recommend", f"run_dir={run}", f"checkpoint={run / 'model.ckpt'}", "user_id=3", *overrides), out)
        return [line.split()[1] for line in out.getvalue().strip().splitlines()[2:]]

    by_model_a = answer(run_a)
    assert answer(run_a, "index=faiss", f"faiss.path={saved}") == by_model_a
    a_written = (run_a / "model.ckpt").stat()
    shutil.copyfile(run_b / "model.ckpt", run_a / "model.ckpt")
    os.utime(run_a / "model.ckpt", ns=(a_written.st_atime_ns, a_written.st_mtime_ns))
    by_model_b = answer(run_a)
    assert by_model_b != by_model_a
    assert answer(run_a, "index=faiss", f"faiss.path={saved}") == by_model_b
    with pytest.raises(ConfigError, match="^faiss.nprobe=0: "):
        answer(run_b, "index=faiss", "faiss.nprobe=0")
    checkpoint = (run_b / "model.ckpt").read_bytes()
    with pytest.raises(ConfigError, match=r"^faiss.path=.*model.ckpt: refusing to overwrite model.ckpt: not an index this project wrote"):
        answer(run_b, "index=faiss", f"faiss.path={run_b / 'model.ckpt'}")
    assert (run_b / "model.ckpt").read_bytes() == checkpoint
    with pytest.raises(ConfigError, match=r"^faiss.nlist=1000: must be an integer from 1 to 100 \(the number of items\)"):
        answer(run_b, "index=faiss", "faiss.kind=ivf", "faiss.nlist=1000")
