"""`recommend`'s arguments, checked before the checkpoint is loaded or anything is computed.

No constructor takes them, so their ranges are this entry point's table (ranges.py says the convention);
it lives beside serving, not in validation, because it needs serving's own facts (the FAISS index
kinds, the export's CSV header) and training must not import serving to check its own config.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from omegaconf import DictConfig

from recsys_lightning.data.catalogue import PARTS
from recsys_lightning.devices import check_cuda_available
from recsys_lightning.errors import ConfigError
from recsys_lightning.ranges import NULL, SCALAR_ID, TEXT, AnyOf, Choice, ListOf, Pattern, Rule, integer, optional, shown, shown_path
from recsys_lightning.serving.vector_index import KINDS
from recsys_lightning.validation import check_rules, check_run_dir_given

CSV_COLUMNS = ["user_id", "rank", "item_id", "score", "source"]  # an export's header, by which output= knows our own files
TWO_STAGE_CSV_COLUMNS = [*CSV_COLUMNS, "retrieval_score"]  # a two-stage export's: score is the re-ranker's
PAIR_ID_COLUMNS = ["user_id", "item_id"]  # a pairs export's ids, then `score`, or `predicted_rating` for a rating model
PAIR_CSV_COLUMNS = [[*PAIR_ID_COLUMNS, "score"], [*PAIR_ID_COLUMNS, "predicted_rating"]]

SERVING_RULES: dict[str, Rule] = {
    "checkpoint": TEXT,
    "user_id": optional(SCALAR_ID),
    "item_id": optional(SCALAR_ID),
    "similar_users": optional(SCALAR_ID),
    "users": AnyOf((Choice(("all",)), ListOf(SCALAR_ID, 1, "[1,2,3]"), NULL)),
    "pairs": optional(TEXT),
    "pair_columns.user": TEXT,
    "pair_columns.item": TEXT,
    "output": optional(TEXT),
    "k": integer(1),
    "exclude": ListOf(Choice(PARTS), 0, "[train,valid]"),
    "min_history": integer(0),
    "embedding": optional(TEXT),
    "chunk_size": integer(1),
    "device": Pattern(r"cpu|auto|cuda(:\d+)?", "cpu, cuda, cuda:<index> or auto"),
    "index": Choice(("model", "faiss")),
    "faiss.kind": Choice(KINDS),
    "faiss.nlist": optional(integer(1)),  # at most the item count: open_or_build checks that, knowing it
    "faiss.nprobe": integer(1),
    "faiss.path": optional(TEXT),
    "retrieval.run_dir": optional(TEXT),
    "retrieval.candidates": integer(1),
    "retrieval.index": Choice(("model", "faiss")),
}


def check_serving_config(cfg: DictConfig) -> None:
    """Every argument of `recommend`, so a typo costs no checkpoint load and no export."""
    check_run_dir_given(cfg)
    check_rules(cfg, SERVING_RULES)
    check_cuda_available("device", cfg.device)
    _check_retrieval(cfg)
    scores_pairs = cfg.pairs is not None or (cfg.user_id is not None and cfg.item_id is not None)
    if scores_pairs and cfg.index != "model":
        raise ConfigError(f"index={shown(cfg.index)} searches for top-K items; a pair's score is the model's own: drop index")
    if cfg.output is not None:
        if cfg.users is None and cfg.pairs is None:
            raise ConfigError(
                f"output={shown(cfg.output)} is written only in batch mode: add users=all or users=[<ids>] "
                "(or pairs=<file> for pair scores), or drop output"
            )
        if Path(str(cfg.run_dir)).is_dir() or Path(str(cfg.output)).expanduser().is_absolute():
            _check_output_file(in_run_folder(cfg.run_dir, cfg.output))  # else loading the run names the missing folder


def in_run_folder(run_dir: str, path: str) -> str:
    """Where `output=` or `faiss.path=` writes: a relative path inside the run folder served (recs.csv
    beside the run's checkpoints, not in whatever folder the command ran from), an absolute one as given."""
    given = Path(str(path)).expanduser()
    return str(given if given.is_absolute() else Path(str(run_dir)) / given)


def _check_retrieval(cfg: DictConfig) -> None:
    """Two stages re-rank recommendations only, and FAISS can serve their first stage, not the second."""
    if cfg.retrieval.run_dir is None:
        if cfg.retrieval.index != "model":
            raise ConfigError(f"retrieval.index={shown(cfg.retrieval.index)} needs retrieval.run_dir=<the retriever's run folder>")
        return
    for action in ("item_id", "similar_users", "pairs"):
        if cfg.get(action) is not None:
            raise ConfigError(f"{action} is answered by run_dir's model alone; drop retrieval.run_dir (it re-ranks user_id and users)")
    if cfg.index != "model":
        raise ConfigError(
            f"index={shown(cfg.index)} would rank the whole catalogue with run_dir's model; with retrieval.run_dir it "
            "scores only the candidates: search the retriever's index with retrieval.index=faiss"
        )


def _check_output_file(output: str) -> None:
    """A file that exists is replaced only when it is an export of ours (its first line is our CSV
    header): a slip such as output=<run>/checkpoints/last.ckpt must not destroy a checkpoint."""
    target = Path(output)
    if target.is_dir():
        raise ConfigError(f"output={shown_path(output)} is a folder; give a file path, e.g. output={shown_path(target / 'recs.csv')}")
    if not target.parent.is_dir():
        problem = "is not a folder" if target.parent.exists() else "does not exist"
        raise ConfigError(f"output={shown_path(output)}: folder {shown_path(target.parent)} {problem}; create it or pick another path")
    if (target.exists() or target.is_symlink()) and not _is_our_export(target):
        raise ConfigError(
            f"output={shown_path(output)} exists and is not a recommendations CSV this project wrote; "
            "refusing to overwrite it: remove it or pick another path"
        )
    try:  # the export is written beside its target and renamed: the folder must take a new file
        with tempfile.TemporaryFile(dir=target.parent):  # nameless (O_TMPFILE): an interrupt leaves nothing there
            pass
    except OSError as error:
        raise ConfigError(
            f"output={shown_path(output)}: cannot create a file in folder {shown_path(target.parent)} ({error.strerror or error}); "
            "pick a folder you can write to"
        ) from None


def _is_our_export(path: Path) -> bool:
    """A regular file whose first line is one of recommend's CSV headers; only its first bytes are read, and a
    FIFO or device (which could block or never end) is never opened."""
    if not path.is_file():
        return False
    try:
        with open(path, "rb") as handle:
            head = handle.read(200)  # enough for the header line; never the whole of a large file
    except OSError:
        return False
    first_line, newline, _ = head.partition(b"\n")
    return bool(newline) and first_line.rstrip(b"\r") in {
        ",".join(columns).encode() for columns in (CSV_COLUMNS, TWO_STAGE_CSV_COLUMNS, *PAIR_CSV_COLUMNS)
    }
