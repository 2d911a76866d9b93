"""Entry point: recompute a run's test (or validation) metrics from its checkpoint and data config.

    python -m recsys_lightning.evaluate run_dir=outputs/runs/<run>
    python -m recsys_lightning.evaluate run_dir=outputs/runs/<reranker> retrieval.run_dir=outputs/runs/<retriever>

The data is rebuilt from the run's own `.hydra/config.yaml` (same source, split and seed), the model
from the checkpoint (loaded with weights_only=True), and scored by the same Lightning test loop as in
training, so the figures must equal the run's metrics.json; the table shows both. With a retriever
(`retrieval.run_dir`), the retriever alone, the run's model alone and the two stages are compared instead;
for a re-ranker's run (experiment=ml100k_reranker), its two stages and its retriever alone at the candidate
count it recorded, which must equal its metrics.json.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import hydra
import pandas as pd
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from recsys_lightning import progress
from recsys_lightning.build import build_datamodule
from recsys_lightning.callbacks import ProgressLog
from recsys_lightning.config import check_override_keys, register_resolvers
from recsys_lightning.console import quiet_library_noise
from recsys_lightning.data.datamodule import EVAL_CANDIDATES, InteractionDataModule
from recsys_lightning.devices import check_cuda_available
from recsys_lightning.errors import ConfigError, RecsysError, exit_with_message
from recsys_lightning.metrics import RankingMetrics
from recsys_lightning.models.weights import load_error_detail
from recsys_lightning.module import RecommenderModule
from recsys_lightning.ranges import NON_NEGATIVE, TEXT, AnyOf, Choice, ListOf, Rule, integer, optional, shown
from recsys_lightning.rerank.lists import candidate_lists, ranked, retriever_metrics
from recsys_lightning.rerank.module import STAGE
from recsys_lightning.rerank.trained import is_reranker_checkpoint, load_reranker
from recsys_lightning.runs.checkpoint_file import (
    BEST_CHECKPOINT_KEY,
    find_checkpoint,
    load_checkpoint,
    read_run_metrics,
    recorded_catalogue,
    with_held_tables,
)
from recsys_lightning.runs.hydra_record import recorded_data_config
from recsys_lightning.runs.other_runs import best_checkpoint_of, check_same_data
from recsys_lightning.runs.safe_config import checked_module_hyper_parameters
from recsys_lightning.runs.same_data import same_training_data
from recsys_lightning.runs.trained_run import check_weights_fit, load_trained, model_weights, torch_device
from recsys_lightning.threads import apply_thread_count
from recsys_lightning.two_stage import MAX_CANDIDATE_COUNTS, PROTOCOL, compare_stages, gains_over_retriever
from recsys_lightning.validation import check_rules, check_run_dir_given, config_value

log = logging.getLogger(__name__)
register_resolvers()
quiet_library_noise()

SPLITS = ("test", "valid")
METRICS_REMEDY = "evaluate compares with it: restore the file, or retrain the run"
# evaluate's arguments (conf/evaluate.yaml): no constructor takes them, so their ranges are declared here.
EVALUATE_RULES: dict[str, Rule] = {
    "checkpoint": TEXT,
    "split": Choice(SPLITS),
    "accelerator": Choice(("auto", "cpu", "gpu", "cuda")),
    "tolerance": NON_NEGATIVE,
    "candidates": optional(Choice(EVAL_CANDIDATES)),
    "retrieval.run_dir": optional(TEXT),
    "retrieval.candidates": AnyOf((integer(1), ListOf(integer(1), 1, "[50,100,200,500]", MAX_CANDIDATE_COUNTS))),
    "callbacks.progress_log.interval_seconds": NON_NEGATIVE,
}


class MetricsDiffer(RecsysError):
    """The checkpoint metrics.json names no longer scores what metrics.json records: the data, the
    code or a file of the run changed since training, so one of the two cannot be trusted."""


def evaluate(
    run_dir: str | Path, checkpoint: str = "best", split: str = "test", accelerator: str = "auto", candidates: str | None = None
) -> dict[str, float]:
    """Metrics of `split` for the run's checkpoint, named as in metrics.json (test/ndcg@10, ...), ranking the
    items the run ranked (its eval.candidates), or `candidates` (all, cold) instead."""
    if split not in SPLITS:
        raise ConfigError(f"split={split!r}: use test or valid")
    run_dir = Path(run_dir)
    path = find_checkpoint(run_dir, checkpoint)
    state = load_checkpoint(path)
    hyper_parameters = checked_module_hyper_parameters(state.get("hyper_parameters"), str(path))
    catalogue = recorded_catalogue(state, path, "evaluate cannot tell its data from another's: retrain the run to evaluate it")
    with_held_tables(state, path, hyper_parameters)  # trainer=sharded: the tables beside the .ckpt
    check_weights_fit(hyper_parameters, model_weights(state["state_dict"], path), path)  # before anything is built from its config
    datamodule: InteractionDataModule = build_datamodule(ranking(recorded_data_config(run_dir), candidates, run_dir))
    datamodule.setup("test")
    trained_shape = (hyper_parameters["num_users"], hyper_parameters["num_items"])
    if trained_shape != (datamodule.num_users, datamodule.num_items):
        raise ConfigError(
            f"{path}: trained on {trained_shape[0]} users x {trained_shape[1]} items, but the run's data now has "
            f"{datamodule.num_users} x {datamodule.num_items}; the data changed since training"
        )
    if not same_training_data(catalogue, datamodule.training_data):
        raise ConfigError(
            f"{path}: trained on other data than {run_dir}/.hydra/config.yaml rebuilds (same sizes, but its users, "
            "items or training pairs differ); evaluate a checkpoint with the run folder it came from"
        )
    if split == "test" and not datamodule.has_test:
        raise ConfigError(f"{run_dir}: the run's split has no test part; use split=valid")
    module = RecommenderModule(**hyper_parameters, data=datamodule.training_data)
    try:
        module.load_state_dict(state["state_dict"])
    except RuntimeError as error:  # a value a model's own load hook refuses (ItemKNN's neighbours out of range)
        raise ConfigError(f"{path}: its weights do not fit its model config ({load_error_detail(error)})") from error
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ProgressLog(progress.interval_seconds())],  # chunks ranked, users/s, time left, off a terminal
    )
    run, prefix = (trainer.test, "test/") if split == "test" else (trainer.validate, "val/")
    run(module, datamodule=datamodule, verbose=False)
    # callback_metrics, as train.py records them: validation metrics reach no logger outside fit.
    return {name: float(value) for name, value in trainer.callback_metrics.items() if name.startswith(prefix)}


def ranking(data: dict[str, Any], candidates: str | None, run_dir: str | Path) -> dict[str, Any]:
    """The run's data config, ranking `candidates` in place of what the run ranked (None: as it did); cold only
    where the run's split held items out of training, as training refuses it otherwise."""
    if candidates == "cold" and data.get("split") != "cold_items":
        split = data.get("split", "its own (data=prepared)")
        raise ConfigError(
            f"candidates=cold ranks only items held out of training, and {run_dir} split with data.split={split}: use candidates=all"
        )
    if candidates is None and data.get("eval_candidates") == "cold" and data.get("split") != "cold_items":  # an edited record
        raise ConfigError(
            f"{Path(run_dir) / '.hydra' / 'config.yaml'}: data.eval_candidates=cold ranks only items held out of training, "
            f"and the run split with data.split={data.get('split')}: the file was edited; restore it, or pass candidates=all"
        )
    return {**data, "eval_candidates": candidates} if candidates is not None and "split" in data else data


def recorded_candidates(run_dir: str | Path) -> str:
    """What the run's metrics.json figures ranked: its eval_candidates, all for a run from before that key."""
    return str(read_run_metrics(run_dir, remedy=METRICS_REMEDY).get("eval_candidates", "all"))


def evaluate_two_stage(
    run_dir: str | Path,
    retriever_dir: str | Path,
    candidates: int | Sequence[int],
    checkpoint: str = "best",
    split: str = "test",
    accelerator: str = "auto",
) -> tuple[pd.DataFrame, str]:
    """The stages side by side (see `compare_stages`; a list of `candidates` sweeps the count) and a heading
    naming both runs."""
    if split not in SPLITS:
        raise ConfigError(f"split={split!r}: use test or valid")
    # Loaded on the CPU, where their catalogues are compared and ranked; the models move to the device.
    reranker = load_trained(find_checkpoint(run_dir, checkpoint))
    retriever = load_trained(best_checkpoint_of(retriever_dir, "retrieval.run_dir"))
    check_same_data(retriever.catalogue, reranker.catalogue, retriever_dir, run_dir)
    device = torch_device(accelerator)
    ks = reranker.hyper_parameters["ks"]
    candidates = candidate_counts(candidates, reranker.catalogue.num_items)
    table = compare_stages(retriever.model.to(device), reranker.model.to(device), reranker.catalogue, candidates, ks, split, device=device)
    names = {
        "retriever": retriever.model_name,
        "re-ranker": reranker.model_name,
        "two-stage": f"{retriever.model_name} -> {reranker.model_name}",
    }
    table.insert(1, "model", table["stage"].map(names))
    if not isinstance(candidates, int):
        return table, (
            f"{split} split: retriever {retriever_dir} ({retriever.model_name}) hands its top {', '.join(map(str, candidates))} "
            f"unseen items per user to re-ranker {run_dir} ({reranker.model_name}); each count re-ranks a prefix of one "
            f"retrieval at {candidates[-1]}, whose time every count's ms includes"
        )
    heading = (
        f"{split} split: retriever {retriever_dir} ({retriever.model_name}) hands its top {candidates} unseen items per user "
        f"to re-ranker {run_dir} ({reranker.model_name}); candidate recall@{candidates} {table[f'recall@{candidates}'][0]:.4f}"
    )
    return table, heading


def evaluate_reranker(
    state: dict[str, Any], path: Path, run_dir: str | Path, retriever_dir: str | Path, split: str = "test"
) -> dict[str, float]:
    """A re-ranker run's figures as its metrics.json names them (test/two_stage/ndcg@10, test/retriever/...;
    val/ for split=valid): the retriever's top N (the count the run recorded) of every user with held-out
    items, the split's seen parts hidden, reordered by the run's ranker; the lists built as training built them."""
    run = load_reranker(state, path, Path(run_dir))
    retriever = load_trained(best_checkpoint_of(retriever_dir, "retrieval.run_dir"))
    check_same_data(retriever.catalogue, run.catalogue, retriever_dir, run_dir)
    hidden, heldout_part = PROTOCOL[split]
    catalogue = run.catalogue
    heldout, hidden_parts = catalogue.seen_in([heldout_part]), catalogue.seen_in(hidden)
    with progress.building(f"{split} candidate lists"):  # 1,024 users a chunk, as compare_stages ranks
        lists = candidate_lists(retriever.model, heldout, hidden_parts, run.features, run.candidates, chunk_size=1024)
    two_stages = RankingMetrics(run.ks, sync_on_compute=False)
    with torch.no_grad():
        for part in lists:
            two_stages.update_ranked(ranked(run.scores(part.features, part.present), part, max(run.ks)), part.chunk, catalogue.num_items)
    prefix = "test" if split == "test" else "val"
    figures = {f"{prefix}/{STAGE}/{name}": float(value) for name, value in two_stages.compute().items()}
    return figures | {f"{prefix}/retriever/{name}": value for name, value in retriever_metrics(lists, run.ks, catalogue.num_items).items()}


def candidate_counts(candidates: int | Sequence[int], num_items: int) -> int | list[int]:
    """A sweep's counts ascending, or a single count, each at most the catalogue (those beyond it cut to it,
    in one logged line: the table's recall@<count> column then names the catalogue, not a number typed)."""
    counts = [candidates] if isinstance(candidates, int) else list(candidates)
    beyond = sorted({count for count in counts if count > num_items})
    if beyond:
        cut = ", ".join(map(str, beyond)) + (" is" if len(beyond) == 1 else " are")
        log.warning(
            "retrieval.candidates=%s: this run has %s items, so %s cut to %d (every unseen item a candidate)",
            shown(candidates),
            f"{num_items:,}",
            cut,
            num_items,
        )
    if isinstance(candidates, int):
        return min(candidates, num_items)
    return sorted({min(count, num_items) for count in counts})


def print_two_stage(table: pd.DataFrame, heading: str, out: TextIO = sys.stdout) -> None:
    """The stages' table, then each stage's NDCG and recall over the retriever's under it: a table of its own,
    as the ratios beside every figure would wrap a terminal's line."""
    print(heading + "\n" + table.to_string(index=False, na_rep="-", float_format=lambda value: f"{value:.4f}"), file=out)
    print("\nover the retriever (each stage's figure / the retriever's; - where the retriever's is 0):", file=out)
    print(gains_over_retriever(table).to_string(index=False, na_rep="-", float_format=lambda value: f"{value:.3f}"), file=out)


def compare_with_recorded(evaluated: dict[str, float], run_dir: str | Path, tolerance: float) -> pd.DataFrame:
    """One row per metric: evaluated, recorded in metrics.json (NaN if absent), and whether they agree."""
    recorded = read_run_metrics(run_dir, remedy=METRICS_REMEDY)
    rows = []
    for name, value in evaluated.items():
        before = recorded.get(name)
        before = float(before) if isinstance(before, (int, float)) and not isinstance(before, bool) else math.nan
        rows.append({"metric": name, "evaluated": value, "metrics.json": before, "equal": abs(value - before) <= tolerance})
    return pd.DataFrame(rows)


def report(table: pd.DataFrame, out: TextIO = sys.stdout) -> None:
    print(table.to_string(index=False, float_format=lambda value: f"{value:.6f}"), file=out)
    print(f"all {len(table)} metrics equal metrics.json" if table["equal"].all() else differing_summary(table), file=out)


def differing_summary(table: pd.DataFrame) -> str:
    differing = table[~table["equal"]]
    return f"{len(differing)} of {len(table)} metrics differ from metrics.json: {', '.join(differing['metric'])}"[:300]


def is_recorded_checkpoint(run_dir: str | Path, checkpoint: str) -> bool:
    """Whether `checkpoint` is the file metrics.json's figures were computed from: only then must they agree."""
    named = read_run_metrics(run_dir, remedy=METRICS_REMEDY).get(BEST_CHECKPOINT_KEY)
    return bool(named) and find_checkpoint(run_dir, checkpoint).resolve() == (Path(run_dir) / named).resolve()


def check_evaluate_config(cfg: DictConfig) -> None:
    """`evaluate`'s arguments, checked before any data or checkpoint is read."""
    check_run_dir_given(cfg)
    check_rules(cfg, EVALUATE_RULES)
    if cfg.retrieval.run_dir is not None and cfg.candidates == "cold":  # compare_stages has no candidate mask
        raise ConfigError(
            "candidates=cold is not implemented with retrieval.run_dir (the two stages rank the whole catalogue): "
            "drop candidates, or evaluate each run alone with candidates=cold"
        )
    check_cuda_available("accelerator", cfg.accelerator)


def compare_and_report(evaluated: dict[str, float], cfg: DictConfig) -> None:
    """The figures beside metrics.json's; MetricsDiffer when they differ for the checkpoint metrics.json names."""
    table = compare_with_recorded(evaluated, cfg.run_dir, cfg.tolerance)
    report(table)
    recorded = table[table["metrics.json"].notna()]  # a metric the run did not record cannot contradict it
    if not recorded["equal"].all() and is_recorded_checkpoint(cfg.run_dir, cfg.checkpoint):
        raise MetricsDiffer(differing_summary(recorded))


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    """The comparison table; exit 1 when the checkpoint metrics.json names no longer gives its figures."""
    try:
        check_evaluate_config(cfg)
        apply_thread_count(OmegaConf.select(cfg, "runtime.threads", default="auto"))
        if cfg.retrieval.run_dir is not None:
            path = find_checkpoint(cfg.run_dir, cfg.checkpoint)
            if is_reranker_checkpoint(state := load_checkpoint(path)):  # its two stages are the run's own figures
                with progress.every(cfg.callbacks.progress_log.interval_seconds):
                    evaluated = evaluate_reranker(state, path, cfg.run_dir, cfg.retrieval.run_dir, cfg.split)
                compare_and_report(evaluated, cfg)
                return
            candidates = config_value(cfg, "retrieval.candidates")  # a list as a plain list
            with progress.every(cfg.callbacks.progress_log.interval_seconds):
                table, heading = evaluate_two_stage(
                    cfg.run_dir, cfg.retrieval.run_dir, candidates, cfg.checkpoint, cfg.split, cfg.accelerator
                )
            print_two_stage(table, heading)
            return
        with progress.every(cfg.callbacks.progress_log.interval_seconds):
            evaluated = evaluate(cfg.run_dir, cfg.checkpoint, cfg.split, cfg.accelerator, cfg.candidates)
        ranked = recorded_candidates(cfg.run_dir)
        if cfg.candidates not in (None, ranked):  # other items ranked: metrics.json holds nothing to compare with
            print(pd.DataFrame({"metric": list(evaluated), "evaluated": list(evaluated.values())}).to_string(index=False))
            print(f"candidates={cfg.candidates}: the run's metrics.json ranked {ranked[:20]!r} items, so nothing was compared")
            return
        compare_and_report(evaluated, cfg)
    except RecsysError as error:
        exit_with_message(error)


if __name__ == "__main__":
    try:
        check_override_keys(sys.argv[1:], "evaluate")
    except ConfigError as error:
        exit_with_message(error)
    main()
