"""What several test modules build on: small interaction data, a DataModule over it, composed configs,
and the entry points run as a user runs them. Fixtures stay in conftest.py; this is plain code."""

from __future__ import annotations

import atexit
import copy
import functools
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_lightning as pl
from hydra import compose, initialize_config_dir
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf

from recsys_lightning.build import build_module
from recsys_lightning.config import PROJECT_ROOT, register_resolvers
from recsys_lightning.data.datamodule import InteractionDataModule, LoadedInteractions
from recsys_lightning.data.training_data import TrainingData
from recsys_lightning.prepared.share import TEST, TRAIN, VALID, UserShare, user_blocks

ROOT = PROJECT_ROOT  # where the entry points run, as a user runs them
CONF = ROOT / "conf"

# Small synthetic data (10 training batches an epoch) that the entry-point tests train on in seconds.
SMALL_DATA = ["data=synthetic", "data.num_users=300", "data.num_items=200", "data.num_interactions=6000", "data.batch_size=512"]
# A quiet CPU run on it; tests add what they vary (trainer.max_epochs, ~logger, ...): a later override wins.
SMALL_RUN = [*SMALL_DATA, "trainer.accelerator=cpu", "callbacks.progress_bar.refresh_rate=0", "projector.max_items=0"]
# A sweep of two one-epoch jobs on it (`finished_sweep` in conftest.py), without TensorBoard events.
SMALL_SWEEP = ["-m", *SMALL_RUN, "~logger", "trainer.max_epochs=1", "model.dim=8,16"]


def random_interactions(num_users: int, num_items: int, per_user: int, seed: int = 0) -> pd.DataFrame:
    """`per_user` distinct items per user with increasing timestamps and ratings 1-5."""
    rng = np.random.default_rng(seed)
    items = np.stack([rng.choice(num_items, per_user, replace=False) for _ in range(num_users)])
    return pd.DataFrame(
        {
            "user_id": np.repeat(np.arange(num_users) + 100, per_user),
            "item_id": items.reshape(-1) + 1000,
            "rating": rng.integers(1, 6, num_users * per_user).astype(np.float32),
            "timestamp": rng.permutation(num_users * per_user).astype(np.int64),
        }
    )


def planted_frame(seed=0) -> pd.DataFrame:
    """Two taste groups: users 0-29 pick items 0-49, users 30-59 pick items 50-99."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(60):
        group = user // 30
        for item in rng.choice(50, 20, replace=False) + 50 * group:
            rows.append((user, item, 5.0, len(rows)))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])


class FrameDataModule(InteractionDataModule):
    """A DataModule over a DataFrame held in memory."""

    def __init__(self, frame: pd.DataFrame, **kwargs) -> None:
        super().__init__(**kwargs)
        self.frame = frame

    def load(self) -> LoadedInteractions:
        return LoadedInteractions(self.frame, pd.DataFrame({"item_id": [], "title": []}), source="memory")


# A small MF/BPR module's config, in the shape of the composed config's parts build_module reads.
MODULE_CONFIG = OmegaConf.create(
    dict(
        model={"_target_": "recsys_lightning.models.MatrixFactorization", "dim": 16},
        loss={"_target_": "recsys_lightning.losses.BPRLoss", "l2": 1e-4},
        sampler={"_target_": "recsys_lightning.samplers.UniformSampler", "num_negatives": 2},
        optimizer={"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.05},
        eval={"ks": [10]},
        seed=0,
    )
)


def module_config(**changes) -> DictConfig:
    """MODULE_CONFIG with whole parts replaced, e.g. `loss={...}`."""
    return OmegaConf.merge(MODULE_CONFIG, {part: None for part in changes}, changes)


def planted_data() -> TrainingData:
    """The TrainingData of `planted_frame`, split with the defaults."""
    datamodule = FrameDataModule(planted_frame())
    datamodule.setup("fit")
    return datamodule.training_data


def made_then_interrupted(make):
    """`make` (os.open, os.mkdir) that makes its file and is then interrupted, as when a Ctrl-C's handler runs
    before the caller holds the name: the moment tempfile's mkstemp and mkdtemp left their file behind."""

    def interrupted(*args, **kwargs):
        made = make(*args, **kwargs)
        if isinstance(made, int):
            os.close(made)
        raise KeyboardInterrupt

    return interrupted


def quiet_trainer(**options) -> pl.Trainer:
    """A CPU Trainer without logger, progress bar or model summary: what the in-process tests run."""
    return pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, **options)


def options(group: str) -> list[str]:
    """The options a user can pick in `conf/<group>/`."""
    return sorted(path.stem for path in (CONF / group).glob("*.yaml"))


def recommender_options() -> list[str]:
    """The `model=` options that are Recommenders (score any (user, item)); not the re-rankers, which order a
    retriever's candidate lists from their features (recsys_lightning/rerank/) and are built only by train."""
    return [option for option in options("model") if not option.endswith("_reranker")]


def all_options() -> list[tuple[str, str]]:
    """Every (group, option) a user can pick with `group=option` (Hydra's own settings aside)."""
    groups = sorted(group.name for group in CONF.iterdir() if group.is_dir() and group.name != "hydra")
    return [(group, option) for group in groups for option in options(group)]


def compose_config(config_name: str, *overrides: str, return_hydra_config: bool = False) -> DictConfig:
    """`conf/<config_name>.yaml` with `overrides`, composed as its entry point composes it.

    Composing the defaults list (a YAML file read and merged per group) is most of a test's time, and most
    tests only add key=value overrides to the same group choices: those choices are composed once per
    session (`_composed_choices`) and the key overrides applied to a copy by Hydra's own code, in order,
    as `compose` applies them after the defaults list. Anything else (the Hydra node, a `hydra.` key, a
    package, a sweep) is composed in full. tests/test_config.py checks both ways give the same config.
    """
    register_resolvers()
    parsed = OverridesParser.create().parse_overrides(list(overrides))  # a malformed override fails here as in compose
    in_full = (override.is_hydra_override() or override.is_sweep_override() or override.package is not None for override in parsed)
    if return_hydra_config or any(in_full):
        return compose_in_full(config_name, *overrides, return_hydra_config=return_hydra_config)
    choices = tuple(override.input_line for override in parsed if _is_group_choice(override))
    cfg = copy.deepcopy(_composed_choices(config_name, choices))
    ConfigLoaderImpl._apply_overrides_to_config([override for override in parsed if not _is_group_choice(override)], cfg)
    return cfg


def compose_in_full(config_name: str, *overrides: str, return_hydra_config: bool = False) -> DictConfig:
    """Hydra's `compose`, every override through it."""
    register_resolvers()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose(config_name, overrides=list(overrides), return_hydra_config=return_hydra_config)


@functools.cache
def _composed_choices(config_name: str, choices: tuple[str, ...]) -> DictConfig:
    return compose_in_full(config_name, *choices)


def _is_group_choice(override: Override) -> bool:
    """A defaults-list override (`model=ncf`, `~logger`) as Hydra tells them: its key names a config group
    folder and its value is no dict; every other override sets, adds or deletes a key."""
    return (CONF / override.key_or_group).is_dir() and not isinstance(override.value(), dict)


def training_config(*overrides: str, run_dir: Path | str = ".", return_hydra_config: bool = False) -> DictConfig:
    """The training config outside a Hydra run: paths.run_dir and run_name read Hydra's runtime, which
    only a run has, so they are given here."""
    return compose_config("config", f"paths.run_dir={run_dir}", "run_name=test", *overrides, return_hydra_config=return_hydra_config)


@functools.cache
def _option_config(group: str, option: str) -> DictConfig:
    return training_config(f"{group}={option}")


def option_config(group: str, option: str) -> DictConfig:
    """`training_config(f"{group}={option}")`, composed once per session for the tests that read every
    option (a copy, so a test may resolve or change it)."""
    return copy.deepcopy(_option_config(group, option))


def torchrun(world: int) -> list[str]:
    """The start of a `torchrun --nproc-per-node <world>` command, as this interpreter runs it. `--standalone`
    lets the launch pick a free port on this host: the default fixed port would collide with another launch
    running at the same time (pytest-xdist runs two test files at once)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}"]


def run_module(module: str, *overrides: str, fault_injection: bool = False, fresh: bool = False) -> subprocess.CompletedProcess:
    """`python -m <module> overrides...` from the project root, as a user runs it; with
    `fault_injection` the callbacks of tests/fault_injection.py can be added from the command line.

    It runs in a child forked from a process that imported torch and Lightning once (tests/entry_zygote.py
    says why), unless `fresh` or RECSYS_TESTS_FRESH=1 asks for a new interpreter."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    if fault_injection:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "tests"), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", module, *overrides]
    if fresh or os.environ.get("RECSYS_TESTS_FRESH") == "1":
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    return _zygote().run(command, module, list(overrides), env)


class _Zygote:
    """The client side of tests/entry_zygote.py: one per pytest worker, started on first use."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="entry_zygote_"))
        read_end, self.write_end = os.pipe()
        self.replies = os.fdopen(read_end)
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "entry_zygote.py"), str(self.write_end)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(self.write_end,), text=True,
        )  # fmt: skip
        os.close(self.write_end)
        self.count = 0

    def run(self, command: list[str], module: str, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
        self.count += 1
        stdout, stderr = self.folder / f"{self.count}.out", self.folder / f"{self.count}.err"
        request = {"module": module, "args": args, "env": env, "cwd": str(ROOT), "stdout": str(stdout), "stderr": str(stderr)}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        if not select.select([self.replies], [], [], 900)[0]:  # as subprocess.run's timeout
            self.process.kill()
            raise subprocess.TimeoutExpired(command, 900)
        reply = self.replies.readline()
        if not reply:
            raise RuntimeError(f"tests/entry_zygote.py ended (exit code {self.process.poll()}); run with RECSYS_TESTS_FRESH=1 to compare")
        result = subprocess.CompletedProcess(command, json.loads(reply)["returncode"], stdout.read_text(), stderr.read_text())
        stdout.unlink()
        stderr.unlink()
        return result

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)
        shutil.rmtree(self.folder, ignore_errors=True)


@functools.cache
def _zygote() -> _Zygote:
    zygote = _Zygote()
    atexit.register(zygote.close)
    return zygote


def trained_run_folder(run_dir: Path, datamodule: InteractionDataModule, config: DictConfig) -> Path:
    """A run folder as serving and evaluate find it (its one checkpoint, `checkpoints/epoch000.ckpt`) after
    one epoch of `config` (a `module_config`) on `datamodule`; no metrics.json."""
    datamodule.setup("fit")
    module = build_module(config, datamodule.training_data)
    trainer = quiet_trainer(max_epochs=1, enable_checkpointing=False, limit_val_batches=0, default_root_dir=run_dir)
    trainer.fit(module, datamodule=datamodule)
    trainer.save_checkpoint(run_dir / "checkpoints" / "epoch000.ckpt")
    return run_dir


class MemoryShares:
    """A ShareSource held in memory, cut from a set-up single-process datamodule as `prepare` cuts a folder:
    users in count-balanced blocks (`user_blocks`, one block per rank), rows in `datamodule.interactions`
    order, parts coded from `datamodule.split`."""

    def __init__(self, datamodule: InteractionDataModule) -> None:
        interactions, split = datamodule.interactions, datamodule.split
        parts = np.full(len(interactions), -1, dtype=np.int8)
        for code, rows in ((TRAIN, split.train), (VALID, split.valid), (TEST, split.test)):
            parts[rows] = code
        kept = parts >= 0  # rows a pre-split source left out of evaluation
        self.users, self.items, self.parts = interactions.users[kept], interactions.items[kept], parts[kept]
        self.ratings, self.timestamps = interactions.ratings[kept], interactions.timestamps[kept]
        self.user_ids = interactions.user_ids
        self.num_users, self.num_items = interactions.num_users, interactions.num_items
        self.item_ids = interactions.item_ids
        self.titles = datamodule.training_data.catalogue.titles
        train = self.parts == TRAIN
        self.item_train_counts = np.bincount(self.items[train], minlength=self.num_items).astype(np.int64)
        self.valid_users = len(np.unique(self.users[self.parts == VALID]))
        self.source = f"memory shares of {datamodule.source}"
        self.ratings_missing = datamodule.training_data.ratings_missing
        self.counts = np.bincount(self.users, minlength=self.num_users)

    def blocks(self, world: int) -> np.ndarray:
        return user_blocks(self.counts, world)

    def train_rows_per_rank(self, world: int) -> list[int]:
        blocks = self.blocks(world)
        train_users = self.users[self.parts == TRAIN]
        return [int(((train_users >= low) & (train_users < high)).sum()) for low, high in zip(blocks[:-1], blocks[1:])]

    def read_share(self, rank: int, world: int) -> UserShare:
        low, high = self.blocks(world)[rank : rank + 2]
        rows = (self.users >= low) & (self.users < high)
        columns = (self.users, self.items, self.ratings, self.timestamps, self.parts)
        return UserShare(int(low), int(high - low), *(column[rows] for column in columns), self.user_ids[low:high])

    def reference(self) -> dict[str, str]:
        return {"path": "/memory", "manifest_sha256": "0" * 64}
