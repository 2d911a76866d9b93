"""Issue 21, serving: neither a FAISS file's header nor a `k` sizes an allocation, headings say which items
were left out, and an export that cannot be written fails in one line before (or without) leaving a file."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import resource
import struct
import subprocess
import sys
import threading

import pytest
import torch

from recsys_lightning.config import register_resolvers
from recsys_lightning.errors import ConfigError
from recsys_lightning.metrics import per_user_metrics
from recsys_lightning.recommend import serve
from recsys_lightning.runs.checkpoint_file import find_checkpoint
from recsys_lightning.runs.trained_run import load_trained
from recsys_lightning.serving import vector_index
from recsys_lightning.serving.arguments import check_serving_config
from recsys_lightning.serving.service import RecommendationService, TwoStageService
from recsys_lightning.serving.vector_index import ItemVectorIndex, open_or_build

from helpers import ROOT, compose_config, made_then_interrupted

register_resolvers()
FLAT_CODES_AT = 4 + 4 + 8 + 8 + 8 + 1 + 4  # fourcc, d, ntotal, two unused words, is_trained, metric: then the code length


def vectors(num_items: int = 300, dim: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(num_items, dim, generator=torch.Generator().manual_seed(seed))


def forged(path, data: bytes) -> None:
    """`data` in `path`, with the sidecar's index_sha256 edited to match it, as a hostile user would."""
    path.write_bytes(data)
    sidecar = path.with_name(path.name + ".json")
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "index_sha256": hashlib.sha256(data).hexdigest()}))


def patched(data: bytes, at: int, value: int) -> bytes:
    return data[:at] + struct.pack("<Q", value) + data[at + 8 :]


def ivf_list_sizes_at(data: bytes) -> int:
    return data.index(b"ilar") + 4 + 8 + 8 + 4 + 8  # fourcc, nlist, code size, "full", the sizes' length


CRAFTED = {
    # name: (kind, how the real file is changed, what the warning says)
    "flat code vector of 2 GiB, cut to 4 KiB": (
        "flat",
        lambda data: patched(data, FLAT_CODES_AT, 2**31 // 4)[:4096],
        "an index whose code vector is declared as 536,870,912 floats, not 2,400",
    ),
    "flat vector count": ("flat", lambda data: patched(data, 8, 2**40), "an index of 1,099,511,627,776 vectors, not 300"),
    "bytes after the vectors": ("flat", lambda data: data + b"\0" * 64, "64 bytes after the index's last vector"),
    "ivf list of 2 GiB": (
        "ivf",
        lambda data: patched(data, ivf_list_sizes_at(data), 2**31 // 32),
        "an inverted list declaring 67,108,864 vectors, more than the 300 items",
    ),
    "ivf quantizer codes": (
        "ivf",
        lambda data: patched(data, 4 + 33 + 16 + 4 + 33, 2**38),
        "an IVF quantizer whose code vector is declared as 274,877,906,944 floats",
    ),
    "ivf cut short": (
        "ivf",
        lambda data: data[:-100],
        "a file that ends 11,900 bytes into the inverted lists' vectors and ids",
    ),
}


@pytest.mark.parametrize("case", CRAFTED)
def test_a_crafted_index_with_a_matching_sidecar_is_rebuilt_without_faiss_reading_it(tmp_path, caplog, monkeypatch, case):
    """FAISS sizes its buffers by what the header declares before reading them: a 4 KiB file once cost 2 GiB."""
    faiss = pytest.importorskip("faiss")
    kind, craft, said = CRAFTED[case]
    path, mine = tmp_path / "items.faiss", vectors()
    open_or_build(mine, path, kind=kind)
    forged(path, craft(path.read_bytes()))
    read = []
    monkeypatch.setattr(faiss, "read_index", lambda *args: read.append(args) or pytest.fail("read_index was called"))
    with caplog.at_level(logging.INFO, logger=vector_index.__name__):
        index = open_or_build(mine, path, kind=kind)
    assert read == []
    assert f"holds {said}" in caplog.text and "rebuilding the index without reading it" in caplog.text, caplog.text
    assert index.num_items == 300
    monkeypatch.undo()
    assert ItemVectorIndex.load(path).num_items == 300  # the rebuilt file is whole again


@pytest.mark.parametrize("kind, nlist, same_vector", [("flat", None, False), ("ivf", None, False), ("ivf", 20, True)])
def test_a_genuine_index_passes_the_header_check_and_is_reused(tmp_path, caplog, kind, nlist, same_vector):
    """Every layout FAISS writes for us is accepted, the sparse list sizes of a mostly empty IVF too."""
    pytest.importorskip("faiss")
    path, mine = tmp_path / "items.faiss", vectors()
    if same_vector:
        mine[:] = mine[0]  # one list holds every item: FAISS writes (list, size) pairs
    open_or_build(mine, path, kind=kind, nlist=nlist)
    with caplog.at_level(logging.INFO, logger=vector_index.__name__):
        open_or_build(mine, path, kind=kind, nlist=nlist)
    assert f"loaded the {kind} index" in caplog.text and "rebuilding" not in caplog.text, caplog.text


def test_faiss_search_never_asks_for_more_results_than_items():
    pytest.importorskip("faiss")
    index = ItemVectorIndex.build(vectors(num_items=30))
    scores, items = index.search(vectors(num_items=2, seed=1), 10**12)
    assert items.shape == (2, 30) and sorted(items[0].tolist()) == list(range(30))


@pytest.fixture(scope="module")
def served(movielens_run):
    return load_trained(find_checkpoint(movielens_run))


def test_a_huge_k_is_answered_with_the_catalogue_and_never_allocated(served):
    service = RecommendationService(served)
    users = torch.tensor([0, 1, -1])
    answer = service.recommend(users, 10**12)  # a [3, 10**12] buffer was allocated first (an allocation error)
    assert answer.items.shape == (3, 1682)
    seen = int(service.excluded.counts(users[:1]).item())
    assert torch.isfinite(answer.scores[0]).sum() == 1682 - seen
    exact = service.recommend(users, 1682)
    assert torch.equal(answer.items, exact.items)


def test_two_stages_cap_k_at_the_candidates_and_the_candidates_at_the_catalogue(served):
    service = TwoStageService(served, RecommendationService(served), candidates=10**12)
    assert service.candidates == 1682 and service.max_k == 1682
    assert service.recommend(torch.tensor([0]), 10**12).items.shape == (1, 1682)
    few = TwoStageService(served, RecommendationService(served), candidates=7)
    answer = few.recommend(torch.tensor([0, 5]), 10**12)
    assert answer.items.shape == (2, 7) and answer.retrieval_scores.shape == (2, 7)


@pytest.mark.parametrize(
    "request_, warned, rows",
    [
        ("user_id=1", "k=200000000: this run has 1,682 items, so answers hold at most 1,682", None),
        ("item_id=1", "k=200000000: this run has 1,682 items, so at most 1,681 similar items", 1681),
        ("similar_users=1", "k=200000000: this run has 943 users, so at most 942 similar users", 942),
    ],
)
def test_a_huge_k_is_capped_and_said_once(movielens_run, caplog, request_, warned, rows):
    out = io.StringIO()
    with caplog.at_level(logging.WARNING):
        serve(compose_config("recommend", f"run_dir={movielens_run}", request_, "k=200000000"), out)
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING] == [warned]
    lines = out.getvalue().splitlines()
    if rows is not None:
        assert len(lines) == rows + 2  # the heading and the column names
    else:
        assert lines[0].startswith("top ") and 1000 < len(lines) - 2 < 1682


def test_the_heading_says_which_seen_items_are_shown(movielens_run):
    def heading(*overrides: str) -> str:
        out = io.StringIO()
        serve(compose_config("recommend", f"run_dir={movielens_run}", "user_id=1", "k=3", *overrides), out)
        return out.getvalue().splitlines()[0]

    assert heading().startswith("top 3 unseen items for user 1 (")
    assert heading("exclude=[]").startswith("top 3 items, seen ones included (exclude=[]) for user 1 (")
    assert heading("exclude=[train,valid]").startswith("top 3 items not seen in train or valid (exclude=[train,valid]) for user 1")


def test_an_output_in_a_folder_that_takes_no_file_fails_before_loading_anything(movielens_run):
    """Root may write in a chmod 555 folder; /sys refuses new files to root as well."""
    config = compose_config("recommend", f"run_dir={movielens_run}", "users=all", "output=/sys/recs.csv")
    with pytest.raises(
        ConfigError, match=r"^output=/sys/recs.csv: cannot create a file in folder /sys \(Permission denied\); pick a folder"
    ):
        check_serving_config(config)


def test_an_unwritable_output_is_one_line_through_the_entry_point(movielens_run, monkeypatch, tmp_path):
    blocked = tmp_path / "readonly"
    blocked.mkdir()

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("tempfile.TemporaryFile", refuse)  # as a read-only folder answers a user who is not root
    with pytest.raises(ConfigError, match="cannot create a file in folder .*readonly.* \\(Permission denied\\); pick a folder"):
        serve(compose_config("recommend", f"run_dir={movielens_run}", "users=all", f"output={blocked / 'recs.csv'}"), io.StringIO())
    assert list(blocked.iterdir()) == []


def test_an_interrupt_as_the_output_folder_is_probed_leaves_nothing_there(movielens_run, monkeypatch, tmp_path):
    config = compose_config("recommend", f"run_dir={movielens_run}", "users=all", f"output={tmp_path / 'recs.csv'}")
    monkeypatch.setattr(os, "open", made_then_interrupted(os.open))
    with pytest.raises(KeyboardInterrupt):
        check_serving_config(config)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_output_over_a_file_that_is_not_an_export_is_refused_before_loading(tmp_path):
    precious = tmp_path / "notes.csv"
    precious.write_text("mine\n")
    config = compose_config("recommend", f"run_dir={tmp_path / 'no-such-run'}", "users=all", f"output={precious}")
    with pytest.raises(ConfigError, match="exists and is not a recommendations CSV"):
        serve(config, io.StringIO())
    assert precious.read_text() == "mine\n"


def limited_file_size(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_file_size_limit_mid_export_is_one_line_and_leaves_the_old_file(movielens_run, tmp_path):
    output = tmp_path / "recs.csv"
    previous = "user_id,rank,item_id,score,source\n1,1,50,1.0,model\n"
    output.write_text(previous)
    command = [sys.executable, "-m", "recsys_lightning.recommend", f"run_dir={movielens_run}", "users=all", "k=50", f"output={output}"]
    result = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONDONTWRITEBYTECODE": "1"},
        preexec_fn=limited_file_size(100_000),  # the export is ~1.6 MB; Python ignores SIGXFSZ, so a write fails with EFBIG
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: output={output}: cannot write the recommendations (File too large); nothing was written: "
        "free space, raise the file-size limit (ulimit -f) or pick another path"
    )
    assert output.read_text() == previous
    assert sorted(path.name for path in tmp_path.iterdir()) == ["recs.csv"]


def test_a_huge_eval_k_is_scored_as_the_ranked_items_and_never_allocated():
    """eval.ks=[100000000] (and evaluate's two-stage depth) once padded every chunk to B x k doubles."""
    hits = torch.tensor([[0, 1, 0, 1, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    num_relevant = torch.tensor([3, 1])
    padded = per_user_metrics(torch.nn.functional.pad(hits, (0, 15)), num_relevant, [3, 20])
    huge = per_user_metrics(hits, num_relevant, [3, 10**12])
    recall, ndcg, hit_rate, precision, mrr = range(5)
    for metric in (recall, ndcg, hit_rate, mrr):
        assert torch.allclose(huge[metric], padded[metric])
    assert torch.allclose(huge[precision, 1], torch.tensor([2, 1], dtype=torch.float64) / 10**12)


def recommend_process(run_dir, *overrides: str, **options) -> subprocess.Popen:
    command = [sys.executable, "-m", "recsys_lightning.recommend", f"run_dir={run_dir}", *overrides]
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True, env=env, **options)


def test_a_pipe_closed_early_is_one_line_not_a_traceback(movielens_run):
    """`recommend users=all | head -1`: the reader goes away after the header."""
    process = recommend_process(movielens_run, "users=all", "k=50", stdout=subprocess.PIPE)
    assert process.stdout.readline() == "user_id,rank,item_id,score,source\n"
    process.stdout.close()
    stderr = process.stderr.read()
    assert process.wait(timeout=300) == 1
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == (
        "error: standard output was closed before the whole answer was written (a pipe into head?); it is incomplete"
    )


def test_a_file_size_limit_on_standard_output_is_one_line(movielens_run, tmp_path):
    """`recommend users=all > recs.csv` under `ulimit -f`."""
    with open(tmp_path / "recs.csv", "w") as redirected:
        process = recommend_process(movielens_run, "users=all", "k=50", stdout=redirected, preexec_fn=limited_file_size(100_000))
        stderr = process.stderr.read()
        assert process.wait(timeout=300) == 1
    assert "Traceback" not in stderr, stderr[-2000:]
    assert stderr.strip().splitlines()[-1].startswith("error: cannot write the answer to standard output (File too large)")


@pytest.mark.parametrize("sidecar_kind", ["huge", "fifo"])
def test_a_huge_or_fifo_sidecar_is_refused_without_being_read_whole(tmp_path, sidecar_kind):
    """The sidecar is read before anything else: a FIFO would block for ever, a huge file be read whole."""
    pytest.importorskip("faiss")
    path = tmp_path / "items.faiss"
    open_or_build(vectors(), path)
    sidecar = tmp_path / "items.faiss.json"
    if sidecar_kind == "huge":
        sidecar.write_text(json.dumps(json.loads(sidecar.read_text())) + " " * 2**20)
    else:
        sidecar.unlink()
        os.mkfifo(sidecar)
    outcome = []
    worker = threading.Thread(target=lambda: outcome.append(refused(path)), daemon=True)
    worker.start()
    worker.join(timeout=30)
    why = (
        "larger than the 65,536 bytes a record of ours takes" if sidecar_kind == "huge" else "not a regular file (a device, pipe or socket)"
    )
    assert outcome and f"cannot read items.faiss.json: {why}" in outcome[0], outcome


def refused(path) -> str:
    with pytest.raises(ConfigError) as refusal:
        open_or_build(vectors(), path)
    return str(refusal.value)
