"""Entry point: compose config -> build data, module, callbacks, loggers, trainer -> fit -> test -> metrics.json.

python -m recsys_lightning.train model.dim=128 trainer.max_epochs=50 seed=7
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities.exceptions import SIGTERMException

from recsys_lightning import progress
from recsys_lightning.baseline_note import closing_note, compared_with_popularity, popularity_on_validation
from recsys_lightning.build import build_datamodule, build_module
from recsys_lightning.callbacks import TrainingTime, final_validation_callbacks
from recsys_lightning.config import check_override_keys, register_resolvers
from recsys_lightning.console import fit_messages, quiet_library_noise, run_summary, without_restore_messages
from recsys_lightning.data.datamodule import InteractionDataModule
from recsys_lightning.data.sized_defaults import AUTO, auto_patience
from recsys_lightning.ddp import leave_together
from recsys_lightning.errors import ConfigError, RecsysError, RunInterrupted, exit_with_message, first_line
from recsys_lightning.hparams_tab import log_run_table
from recsys_lightning.memory_estimate import check_memory, config_sizes
from recsys_lightning.models.closed_form import ClosedFormRecommender
from recsys_lightning.models.popularity import Popularity
from recsys_lightning.module import RecommenderModule
from recsys_lightning.projector import log_item_embeddings
from recsys_lightning.rerank import is_reranker
from recsys_lightning.rerank.build import build_reranker, closing_lines, reranker_figures
from recsys_lightning.runs.atomic import atomic_file
from recsys_lightning.runs.checkpoint_file import load_checkpoint
from recsys_lightning.runs.resume import check_resume_callbacks, check_resume_fits
from recsys_lightning.runs.resume_command import resume_command
from recsys_lightning.runs.run_config import RunRecord, check_same_config, recorded_state
from recsys_lightning.runs.run_folder import LAST, RunFolder, is_rank_zero
from recsys_lightning.seeds import stream_seed
from recsys_lightning.stop_signals import SignalReceived, StopSignals
from recsys_lightning.sweep import kept_job_metrics, resuming_sweep
from recsys_lightning.threads import apply_thread_count, processes_per_host
from recsys_lightning.validation import check_training_config

log = logging.getLogger(__name__)
register_resolvers()
quiet_library_noise()


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train, early-stop, test the best checkpoint, and return the flat metrics written to metrics.json.

    The run folder is claimed first: a fresh run refuses a folder that holds another run's results,
    and no two processes train into one folder at once. SIGTERM or Ctrl-C in any phase ends the run with
    RunInterrupted, whose one line says what was kept and the command that resumes it.
    """
    with StopSignals() as signals:
        try:
            check_training_config(cfg)
            _share_cpu(cfg)
            run_folder = RunFolder(cfg.paths.run_dir)
            if resuming_sweep(cfg.get("ckpt_path")):
                kept = _resume_sweep_job(cfg, run_folder)
                if kept is not None:
                    return kept
            ckpt_path = cfg.get("ckpt_path")
            if ckpt_path is not None:
                run_folder.existing_checkpoint(str(ckpt_path))
            if is_rank_zero():  # DDP ranks > 0 write into the folder rank 0 holds
                run_folder.claim(resuming=run_folder.resumes_in_place(ckpt_path))
        except (SignalReceived, KeyboardInterrupt) as stop:
            by = "Ctrl-C (SIGINT)" if isinstance(stop, KeyboardInterrupt) else "SIGTERM"
            number = signal.SIGINT if isinstance(stop, KeyboardInterrupt) else signal.SIGTERM
            raise RunInterrupted(f"stopped by {by} before the run began, nothing was written; run the command again", number) from stop
        try:
            with progress.every(_progress_interval(cfg)):
                return _train(cfg, run_folder, signals)
        except MemoryError as error:  # e.g. data.num_users=100000000000: numpy cannot allocate the arrays
            raise RecsysError(
                f"out of memory ({first_line(error, 120)}); lower the sizes in the config "
                "(data.num_users/num_items/num_interactions, model.dim, data.batch_size, data.eval_chunk_size)"
            ) from error
        finally:
            run_folder.release()


class _Progress:
    """How far a run got, for the message of a signal that stops it."""

    def __init__(self) -> None:
        self.trainer: pl.Trainer | None = None
        self.fit_finished = False

    def phase(self) -> str:
        if self.trainer is None:
            return "while loading data"
        if not self.fit_finished:
            return f"at epoch {self.trainer.current_epoch}"
        return "after training, before the best checkpoint was validated and tested"


def _train(cfg: DictConfig, run_folder: RunFolder, signals: StopSignals) -> dict[str, Any]:
    """`_fit_and_test`, with a signal in any phase turned into RunInterrupted saying how to go on."""
    progress = _Progress()
    try:
        return _fit_and_test(cfg, run_folder, signals, progress)
    except (SIGTERMException, SignalReceived) as stop:
        raise RunInterrupted(_how_to_resume(run_folder, "SIGTERM", progress)) from stop
    except KeyboardInterrupt as stop:
        raise RunInterrupted(_how_to_resume(run_folder, "Ctrl-C (SIGINT)", progress), signal.SIGINT) from stop
    except SystemExit as stop:  # Lightning ends a Ctrl-C inside a stage with sys.exit(1) after its graceful shutdown
        if progress.trainer is None or not progress.trainer.interrupted:
            raise
        raise RunInterrupted(_how_to_resume(run_folder, "Ctrl-C (SIGINT)", progress), signal.SIGINT) from stop


def _fit_and_test(cfg: DictConfig, run_folder: RunFolder, signals: StopSignals, progress: _Progress) -> dict[str, Any]:
    try:
        datamodule, module, callbacks, resume_from = _prepare(cfg, run_folder)
    except BaseException:
        run_folder.restore_record()  # a refused resume leaves the record of the run it refused to extend
        raise
    run_folder.drop_record_backup()
    loggers = [instantiate(logger) for logger in (cfg.get("logger") or {}).values() if logger]
    if not loggers:  # `~logger`: nowhere to write learning rates, and Lightning would refuse the whole run for it
        callbacks = [callback for callback in callbacks if not isinstance(callback, LearningRateMonitor)]
    callbacks = [*callbacks, *final_validation_callbacks(cfg.trainer.get("max_time"))]
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, max_time=None)
    progress.trainer = trainer
    clock = next((callback for callback in callbacks if isinstance(callback, TrainingTime)), None)

    fit_start = time.perf_counter()
    try:
        # A resumed fit that had already finished (stopped after fit, while testing) restores and trains nothing.
        with fit_messages(resuming=resume_from is not None):
            trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    except Exception as error:
        if resume_from is None or clock is None or clock.training_began or isinstance(error, RecsysError):
            raise
        # Restoring a checkpoint's loop, optimizer or callback state failed inside Lightning or torch.
        raise ConfigError(
            f"ckpt_path={resume_from}: Lightning could not restore its state ({type(error).__name__}: "
            f"{first_line(error, 120)}); the file was altered or comes from another version, resume from "
            "another checkpoint"
        ) from error
    progress.fit_finished = True  # Lightning stops a fit at its next batch: a signal it left to us came at the end
    signals.raise_if_received()
    # Read now: validating a checkpoint below restores the callbacks' state saved with it.
    train_seconds = clock.seconds if clock else time.perf_counter() - fit_start
    best_checkpoint = _best_checkpoint(trainer, run_folder, resume_from)
    metrics: dict[str, Any] = {}
    with without_restore_messages():
        trainer.validate(module, datamodule=datamodule, ckpt_path=best_checkpoint, verbose=False, weights_only=True)
        signals.raise_if_received()
        metrics.update({name: value.item() for name, value in trainer.callback_metrics.items() if name.startswith("val/")})
        if cfg.run_test and datamodule.has_test:
            metrics.update(trainer.test(module, datamodule=datamodule, ckpt_path=best_checkpoint, verbose=False, weights_only=True)[0])
            signals.raise_if_received()
    metrics["best_epoch"] = _checkpoint_epoch(best_checkpoint)
    metrics["train_seconds"] = round(train_seconds, 2)
    metrics["epochs"] = trainer.current_epoch
    metrics["data_source"] = datamodule.source
    metrics["eval_candidates"] = str(cfg.eval.candidates)  # which items val/ and test/ ranked: all, or each part's new ones
    metrics["best_checkpoint"] = os.path.relpath(best_checkpoint, run_folder.path)
    if is_reranker(cfg):  # the retriever alone on the same lists, and what each way costs
        metrics.update(reranker_figures(datamodule, module, list(cfg.eval.ks)))

    monitor, ks = str(cfg.monitor.metric), list(cfg.eval.ks)
    baseline = None
    if compared_with_popularity(monitor, isinstance(module.model, Popularity), str(cfg.eval.candidates)):  # every process ranks its share
        baseline = popularity_on_validation(datamodule, ks, distributed=trainer.world_size > 1)[monitor]
    if trainer.is_global_zero:
        chosen = OmegaConf.merge(cfg, {"data": {"batch_size": datamodule.batch_size}})  # auto shown as what it chose
        log_run_table(trainer.loggers, chosen, _hydra_choices(), metrics, trainer.global_step)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger) and cfg.projector.max_items > 0 and isinstance(module, RecommenderModule):
                # The module holds the best checkpoint's weights here: validate and test loaded them.
                log_item_embeddings(logger.experiment, module.model, module.data.catalogue, cfg.projector.max_items, trainer.global_step)
        with atomic_file(run_folder.path / "metrics.json") as handle:
            json.dump(metrics, handle, indent=2, sort_keys=True)
        tensorboard = any(isinstance(logger, TensorBoardLogger) for logger in trainer.loggers) and not _in_sweep()
        if is_reranker(cfg):
            note = closing_lines(metrics, ks[0])
        else:
            note = closing_note(metrics, monitor, baseline, datamodule.batch_size, isinstance(module.model, ClosedFormRecommender))
        print(run_summary(metrics, monitor, ks, run_folder.path, tensorboard, note), flush=True)
    return metrics


def _progress_interval(cfg: DictConfig) -> float:
    """Seconds between progress lines (progress.py), for the data build as for ProgressLog: one key,
    `callbacks.progress_log.interval_seconds`; without that callback no lines at all."""
    return float(OmegaConf.select(cfg, "callbacks.progress_log.interval_seconds", default=None) or 0)


def _resume_sweep_job(cfg: DictConfig, run_folder: RunFolder) -> dict[str, Any] | None:
    """One job of a resumed sweep: a finished job's metrics, kept with its record as it was; otherwise None,
    and a job stopped before its first checkpoint (or never started) runs fresh instead of resuming."""
    kept = kept_job_metrics(run_folder.path)
    if kept is not None:
        run_folder.restore_record()
        log.info("%s finished before the sweep was stopped: kept, not run again", run_folder.path)
        return kept
    if not (run_folder.checkpoints / f"{LAST}.ckpt").is_file():
        cfg.ckpt_path = None
    return None


def _prepare(cfg: DictConfig, run_folder: RunFolder) -> tuple[InteractionDataModule, RecommenderModule, list[pl.Callback], Path | None]:
    """Data, module and callbacks, and the checkpoint to resume from once it was checked to fit them.

    The checkpoint's recorded config is compared before any data loads: a refused resume costs nothing."""
    resume_from, resume_state = run_folder.resume_checkpoint(str(cfg.ckpt_path)) if cfg.get("ckpt_path") is not None else (None, None)
    if resume_from is not None:
        check_same_config(recorded_state(resume_state), cfg, str(resume_from))
    pl.seed_everything(stream_seed(cfg.seed, "init") % 2**32, workers=True)  # model initialisation
    if is_reranker(cfg):  # a second stage: trained on a retriever's candidate lists (recsys_lightning/rerank/)
        reranker_data, reranker = build_reranker(cfg)
        callbacks = [_instantiate_callback(callback, reranker_data, cfg) for callback in cfg.callbacks.values() if callback]
        return reranker_data, reranker, [*callbacks, RunRecord(cfg)], None
    check_memory(cfg, *config_sizes(cfg))  # what config alone sizes (a batch of negatives), before the data loads
    datamodule: InteractionDataModule = build_datamodule(cfg.data, **_features_unread(cfg))
    datamodule.setup("fit")  # the model's size depends on the data
    check_memory(cfg, datamodule.training_data.num_users, datamodule.training_data.num_items)
    module = build_module(cfg, datamodule.training_data)
    callbacks = [_instantiate_callback(callback, datamodule, cfg) for callback in cfg.callbacks.values() if callback] + [RunRecord(cfg)]
    if resume_from is not None:
        check_resume_fits(resume_state, resume_from, module)
        # Only this folder's own fit, stopped before its test wrote metrics.json, may be resumed just to be tested.
        may_finish = run_folder.resumes_in_place(str(cfg.ckpt_path)) and not (run_folder.path / "metrics.json").exists()
        check_resume_callbacks(resume_state, resume_from, callbacks, cfg.trainer.max_epochs, may_finish)
    return datamodule, module, callbacks, resume_from


def _features_unread(cfg: DictConfig) -> dict[str, list[str]]:
    """Data overrides that leave side features unread when the model uses none (`model.features` false or
    absent, e.g. `experiment=ml100k_cold_items model.features=false`): reading, indexing and logging them would be for nothing."""
    if cfg.model.get("features"):
        return {}
    named = [key for key in ("item_features", "user_features") if cfg.data.get(key)]
    if named:
        log.info("model.features is off: %s not read", " and ".join(f"data.{key}" for key in named))
    return {key: [] for key in named}


def _instantiate_callback(callback: DictConfig, datamodule: InteractionDataModule, cfg: DictConfig) -> pl.Callback:
    """A callback of the config; `patience: auto` (early stopping's default) is chosen from the steps between
    validations (sized_defaults.auto_patience) and logged."""
    if callback.get("patience") != AUTO:
        return instantiate(callback)
    steps = datamodule.steps_per_epoch * (OmegaConf.select(cfg, "trainer.check_val_every_n_epoch") or 1)
    patience = auto_patience(steps)
    if is_rank_zero():
        log.info("early stopping patience %d validations (auto: %d training steps between validations)", patience, steps)
    return instantiate(callback, patience=patience)


def _best_checkpoint(trainer: pl.Trainer, run_folder: RunFolder, resumed_from: Path | None) -> str:
    """The monitored best: a checkpoint of this folder, or of the folder this run resumed from."""
    callback = trainer.checkpoint_callback
    best = callback.best_model_path if callback else ""
    if not best:  # e.g. trainer.max_time or max_steps ran out before the first step: nothing was trained
        raise ConfigError(
            f"training ended at epoch {trainer.current_epoch}, step {trainer.global_step}, before any validation, so "
            "no checkpoint was written to test or serve; give it more time or steps (trainer.max_time, trainer.max_steps)"
        )
    allowed = {run_folder.checkpoints.resolve()} | ({resumed_from.parent} if resumed_from else set())
    if Path(best).resolve().parent not in allowed:
        raise ConfigError(
            f"the best checkpoint on record, {best[:200]}, is outside {run_folder.checkpoints}; resume from a checkpoint of this run"
        )
    return best


def _how_to_resume(run_folder: RunFolder, stopped_by: str, progress: _Progress) -> str:
    """One line: when the run stopped, what it kept, and the command that goes on from there."""
    last = run_folder.checkpoints / f"{LAST}.ckpt"
    where = progress.phase()
    if _in_sweep():  # the sweep resumes as a whole: this job, the finished ones and the rest
        command = resume_command(run_folder.path)
        if command:
            held = f"{last} holds the last finished epoch" if last.is_file() else "this job had written no checkpoint yet"
            return f"stopped by {stopped_by} {where}; {held}: resume the whole sweep with: {command}"
    if not last.is_file():
        again = resume_command(run_folder.path, from_last=False)
        how = f"start it again with: {again}" if again else "run the command again to start over"
        return f"stopped by {stopped_by} {where}, before any checkpoint was written; {how}"
    command = resume_command(run_folder.path) or f"the same command plus hydra.run.dir={run_folder.path} ckpt_path=last"
    if progress.fit_finished:
        return f"stopped by {stopped_by} {where}; {last} holds the finished training: validate, test and write metrics.json with: {command}"
    return f"stopped by {stopped_by} {where}; {last} holds the last finished epoch: resume with: {command}"


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Hydra wrapper: a user error becomes one line on stderr and exit code 1; returns the sweep objective.

    In a multirun, a failing run leaves error.txt in its folder and returns NaN, so the sweep goes on
    and its summary lists the failure.
    """
    try:
        metrics = train(cfg)
        leave_together(destroy=HydraConfig.get().mode != RunMode.MULTIRUN)
    except Exception as error:
        if HydraConfig.get().mode == RunMode.MULTIRUN and not isinstance(error, RunInterrupted):
            user_error = isinstance(error, RecsysError)
            message = str(error) if user_error else f"{type(error).__name__}: {error}"
            log.error("run failed: %s", message, exc_info=not user_error)
            (Path(cfg.paths.run_dir) / "error.txt").write_text(message + "\n")
            return float("nan")
        if not isinstance(error, RecsysError):
            raise
        exit_with_message(error)
    objective = cfg.get("optimized_metric")
    return metrics.get(objective) if objective else None


def _share_cpu(cfg: DictConfig) -> None:
    """torch's intra-op threads: `runtime.threads`, or this host's cores shared by the DDP ranks and the
    jobs a parallel sweep runs at once; one line in the run log says how many and why."""
    launcher = HydraConfig.get().launcher if _in_sweep() else {}
    jobs = launcher.get("n_jobs", 1) if isinstance(launcher.get("n_jobs", 1), int) else 1  # Hydra's joblib launcher
    plan = apply_thread_count(
        OmegaConf.select(cfg, "runtime.threads", default="auto"), processes_per_host(OmegaConf.select(cfg, "trainer.devices")), jobs
    )
    if is_rank_zero():
        log.info(plan.describe())


def _in_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _hydra_choices() -> dict[str, str | None]:
    """The option of each config group this run composed (`model: ncf`); none outside a Hydra run."""
    return dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}


def _checkpoint_epoch(path: str) -> int:
    return int(load_checkpoint(path)["epoch"])


if __name__ == "__main__":
    try:
        check_override_keys(sys.argv[1:], "config")
    except ConfigError as error:
        exit_with_message(error)
    main()
