"""ML-20M-sized synthetic data: seconds to build it, seconds for one MF/BPR training epoch, one full
validation pass, and the process's peak resident memory.

    .venv/bin/python bench/bench_synthetic.py                                  # 138k users x 27k items x 20M
    .venv/bin/python bench/bench_synthetic.py data.num_interactions=1000000    # any Hydra override
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time

import pytorch_lightning as pl
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from recsys_lightning.build import build_module
from recsys_lightning.config import PROJECT_ROOT, register_resolvers


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-validation", action="store_true", help="time only data and the training epoch")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    register_resolvers()
    defaults = ["data=synthetic", "data.num_users=138000", "data.num_items=27000", "data.num_interactions=20000000"]
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"paths.run_dir={tempfile.mkdtemp()}", "run_name=bench", *defaults, *args.overrides])
    pl.seed_everything(cfg.seed, verbose=False)

    start = time.perf_counter()
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    build_seconds = time.perf_counter() - start
    rss_after_data = peak_rss_gb()

    module = build_module(cfg, datamodule.training_data)
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    epoch_seconds = time.perf_counter() - start
    validation_seconds = float("nan")
    if not args.skip_validation:
        start = time.perf_counter()
        evaluator = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False)
        evaluator.validate(module, datamodule=datamodule, verbose=False)
        validation_seconds = time.perf_counter() - start

    steps = len(datamodule.train_dataloader())
    print(
        f"\n{datamodule.source}: {len(datamodule.interactions):,} distinct interactions, "
        f"{len(datamodule.split.train):,} train pairs, batch {datamodule.batch_size} ({steps} steps)"
    )
    print(f"build data (generate, dedupe, split, CSR): {build_seconds:8.1f} s   peak RSS {rss_after_data:.2f} GB")
    print(f"one MF/BPR training epoch (Lightning):     {epoch_seconds:8.1f} s   {len(datamodule.split.train) / epoch_seconds:,.0f} pairs/s")
    print(f"full validation ({len(datamodule.val_dataloader().dataset.chunks)} user chunks):       {validation_seconds:8.1f} s")
    print(f"peak RSS of the whole run: {peak_rss_gb():.2f} GB")


if __name__ == "__main__":
    main()
