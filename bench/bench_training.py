"""MF/BPR on ML-100K: seconds per training epoch (Lightning vs a bare PyTorch loop) and per full validation.

Both loops use the same model class, sampler, batches and optimiser, in the same process.

    .venv/bin/python bench/bench_training.py                      # defaults from conf/
    .venv/bin/python bench/bench_training.py data.batch_size=8192 --epochs 10
"""

from __future__ import annotations

import argparse
import time

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from recsys_lightning.build import build_module
from recsys_lightning.config import PROJECT_ROOT, register_resolvers
from recsys_lightning.ranking import top_k_unseen
from recsys_lightning.seeds import stream_seed


class EpochTimer(pl.Callback):
    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds.append(time.perf_counter() - self.start)


def bare_epochs(cfg, datamodule, epochs: int) -> list[float]:
    """The same training step as RecommenderModule.training_step (its `batch_loss` and Adam), without Lightning."""
    module = build_module(cfg, datamodule.training_data)
    module.on_fit_start()  # binds the training positives, as Lightning's fit does
    optimizer = instantiate(cfg.optimizer)(module.parameters())
    loader = datamodule.train_dataloader()
    seconds = []
    for epoch in range(epochs):
        start = time.perf_counter()
        loader.sampler.set_epoch(epoch)
        module.sampler.reseed(stream_seed(cfg.seed, "negatives", 0, epoch))  # as on_train_epoch_start does
        for batch in loader:
            loss = module.batch_loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        seconds.append(time.perf_counter() - start)
    return seconds


def lightning_epochs(cfg, datamodule, epochs: int, progress_bar: bool) -> list[float]:
    """Lightning's own loop; with `progress_bar`, the bar as the default config sets it up."""
    timer = EpochTimer()
    callbacks = [timer, instantiate(cfg.callbacks.progress_bar)] if progress_bar else [timer]
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=callbacks,
    )
    trainer.fit(build_module(cfg, datamodule.training_data), datamodule=datamodule)
    return timer.seconds


def validation_seconds(cfg, datamodule, repeats: int) -> tuple[list[float], list[float]]:
    """A full ranking pass over all validation users: the bare scoring loop, and Lightning's validate()."""
    module = build_module(cfg, datamodule.training_data).eval()
    chunks = list(datamodule.val_dataloader())
    bare = []
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            for chunk in chunks:
                top_items = top_k_unseen(
                    module.model.score_all(chunk.users), chunk.exclude_rows, chunk.exclude_items, module.val_metrics.max_k
                )
                module.val_metrics.update_ranked(top_items, chunk, module.model.num_items)
            module.val_metrics.compute()
            module.val_metrics.reset()
            bare.append(time.perf_counter() - start)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False)
    lightning = []
    for _ in range(repeats):
        start = time.perf_counter()
        trainer.validate(module, datamodule=datamodule, verbose=False)
        lightning.append(time.perf_counter() - start)
    return bare, lightning


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=8, help="timed epochs per loop (the first is warm-up)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for recsys_lightning.train")
    args = parser.parse_args()

    register_resolvers()
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["paths.run_dir=/tmp/recsys_bench", "run_name=bench", *args.overrides])
    pl.seed_everything(cfg.seed, verbose=False)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")

    # Best of N after the warm-up epoch: on a shared host, noise only ever adds time.
    best = lambda values: min(values[1:] if len(values) > 1 else values)  # noqa: E731
    bare = best(bare_epochs(cfg, datamodule, args.epochs))
    lightning = best(lightning_epochs(cfg, datamodule, args.epochs, progress_bar=False))
    lightning_bar = best(lightning_epochs(cfg, datamodule, args.epochs, progress_bar=True))
    bare_val, lightning_val = (best(v) for v in validation_seconds(cfg, datamodule, repeats=10))

    batches = len(datamodule.train_dataloader())
    print(
        f"\nMF/BPR on {datamodule.source}: {len(datamodule.split.train):,} train pairs, batch {datamodule.batch_size} "
        f"({batches} steps/epoch), dim {cfg.model.dim}, {torch.get_num_threads()} threads"
    )
    print(f"{'what (best of the timed epochs)':42s} {'seconds':>9s}")
    print(f"{'epoch, bare PyTorch loop':42s} {bare:9.4f}")
    print(f"{'epoch, Lightning (no progress bar)':42s} {lightning:9.4f}")
    print(f"{'epoch, Lightning (default progress bar)':42s} {lightning_bar:9.4f}")
    print(f"{'full validation pass, scoring loop':42s} {bare_val:9.4f}")
    print(f"{'full validation pass, Trainer.validate':42s} {lightning_val:9.4f}")
    print(f"ratio Lightning / bare epoch: {lightning / bare:.2f} (with progress bar {lightning_bar / bare:.2f})")


if __name__ == "__main__":
    main()
