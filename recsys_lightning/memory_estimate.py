"""The memory a training config will need, estimated before the model, sampler and optimizer are built,
and a run that cannot fit this machine refused in one line with the estimate and the key to lower.

`model.dim=65536` passes its range check yet needs gigabytes of embeddings and Adam state;
`sampler.num_negatives=1000000` allocates [batch, 10^6] draws on the first step. Without this check
such a run ends in the OOM killer (no message) or a MemoryError deep inside torch, after the data was
loaded. Each component below is one function, so the figure a message quotes can be traced; the
factors are what the code allocates, checked against measured peaks by bench/bench_memory_estimate.py
(within 2x for the default run and larger configs).
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from recsys_lightning.data.sized_defaults import AUTO, LARGEST_BATCH
from recsys_lightning.errors import ConfigError

GIB = 2**30
FLOAT = 4  # bytes of a float32 weight, activation or score
INDEX = 8  # bytes of an int64 index (and of a float64 uniform draw)
# What a process holds before any of the components: Python, torch, Lightning, TensorBoard and the
# loaded ML-100K with its split, measured with /usr/bin/time -v (0.41 GiB after the imports alone).
PROCESS_BASELINE = int(0.45 * GIB)
BASELINE = "Python, torch and Lightning"
# Copies a training step keeps per scored candidate vector: the gathered rows, their product with the
# user's, and the gradients of both.
ACTIVATION_COPIES = 4
# Arrays a uniform unseen draw builds per draw: a float64 uniform, the rank, the key, the search result.
DRAW_COPIES = 5
# Score matrices an evaluation chunk holds at once: the scores, the masked copy the ranking sorts, top-K work.
EVALUATION_COPIES = 3
# Activations autograd keeps per MLP unit for each (user, pooled item) pair: the layer's output and its ReLU.
MLP_KEPT_COPIES = 2
# Bytes per generated interaction at its peak: int64 user and item, float32 rating, int64 timestamp
# (28 bytes), about 3 copies while generating, splitting and indexing.
INTERACTION_BYTES = 100
REFUSE_ABOVE = 0.9  # share of the available memory a run may plan to use
# Optimizer state per weight: Adam and SparseAdam keep two moments, Adagrad one sum, SGD a momentum buffer.
OPTIMIZER_STATE = {"Adam": 2, "AdamW": 2, "SparseAdam": 2, "Adagrad": 1, "SGD": 0}


# Keys a user sets that size the components: the one whose default would save the most is named.
SIZING_KEYS = (
    "model.dim",
    "model.gmf_dim",
    "model.mlp_dim",
    "model.hidden",
    "sampler.num_negatives",
    "sampler.candidates",
    "data.batch_size",
    "data.eval_chunk_size",
    "data.num_users",
    "data.num_items",
    "data.num_interactions",
)


@dataclass(frozen=True)
class Component:
    """One allocation the run will make: what it is and its size."""

    what: str
    bytes: int


def estimate(cfg: DictConfig, num_users: int, num_items: int) -> list[Component]:
    """Every component this config will allocate for `num_users` x `num_items`, largest first."""
    model, sampler = _plain(cfg.get("model")), _plain(cfg.get("sampler"))
    components = [
        Component(BASELINE, PROCESS_BASELINE),
        Component("the generated interactions", interaction_arrays(cfg)),
        Component(f"embeddings and {optimizer_name(cfg)} state", embedding_tables(model, num_users, num_items, cfg)),
        Component(f"MLP weights and {optimizer_name(cfg)} state", mlp_weights(model, cfg)),
        Component("a training step's activations", batch_activations(cfg, num_users, num_items)),
        Component("the retrieved candidates", sampler_tables(sampler, num_users)),
        Component("an evaluation chunk", evaluation_chunk(cfg, num_items)),
    ]
    return sorted((component for component in components if component.bytes > 0), key=lambda c: -c.bytes)


def interaction_arrays(cfg: DictConfig) -> int:
    """Synthetic data's interactions, whose count the config sets: each one's user, item, rating and
    timestamp while generated, then its split and training CSR (INTERACTION_BYTES). Loaded data is
    counted once read: it is then part of what the process holds."""
    return int(OmegaConf.select(cfg, "data.num_interactions", default=0) or 0) * INTERACTION_BYTES


def optimizer_name(cfg: DictConfig) -> str:
    target = OmegaConf.select(cfg, "optimizer._target_")
    return str(target).rsplit(".", 1)[-1] if target else "no optimizer"


def weight_copies(cfg: DictConfig, sparse: bool) -> int:
    """Copies of each trained weight: the weight, its gradient (a dense one unless `sparse`) and the
    optimizer's state (OPTIMIZER_STATE; SGD with momentum keeps one buffer)."""
    state = OPTIMIZER_STATE.get(optimizer_name(cfg), 2)
    if optimizer_name(cfg) == "SGD" and OmegaConf.select(cfg, "optimizer.momentum", default=0):
        state = 1
    return 1 + (0 if sparse else 1) + state


def embedding_tables(model: dict[str, Any], num_users: int, num_items: int, cfg: DictConfig) -> int:
    """The users' and items' embedding rows (with biases) and the feature embeddings, times their
    gradients and optimizer state; EASE and item-kNN keep item x item matrices instead."""
    kind = str(model.get("_target_", "")).rsplit(".", 1)[-1]
    if kind == "EASE":  # the Gram matrix, its inverse and the weights, all num_items^2 while fitting
        return 3 * num_items**2 * FLOAT
    if kind == "ItemKNN":  # the similarities of all items, float32, plus the kept neighbours
        return num_items**2 * FLOAT + num_items * int(model.get("num_neighbours") or 0) * (FLOAT + INDEX)
    width = _embedding_width(model)
    features = (int(model.get("num_user_features") or 0) + int(model.get("num_item_features") or 0)) if model.get("features") else 0
    rows = (num_users + num_items + features) * width
    return rows * FLOAT * weight_copies(cfg, bool(model.get("sparse_gradients")))


def mlp_weights(model: dict[str, Any], cfg: DictConfig) -> int:
    """HybridMF's and NeuMF's MLP: the user and item inputs into the first layer, each layer into the
    next, the last into one score; weights, biases, gradients and optimizer state."""
    layers = _mlp_layers(model)
    weights = sum(width_in * width_out + width_out for width_in, width_out in layers)
    return weights * FLOAT * weight_copies(cfg, sparse=False)


def batch_activations(cfg: DictConfig, num_users: int, num_items: int) -> int:
    """One training step: each example's (1 + negatives) scored vectors and their gradients, the draws
    that picked the negatives, the MLP's activations per candidate, and for the full softmax (or a
    shared pool) a score, with its MLP activations, for every item of each distinct user in the batch."""
    model, sampler = _plain(cfg.get("model")), _plain(cfg.get("sampler"))
    batch = OmegaConf.select(cfg, "data.batch_size", default=1) or 1
    batch = LARGEST_BATCH if batch == AUTO else int(batch)  # auto chooses at most this, once the data is split
    candidates = batch * (1 + negatives_per_example(sampler))
    width = _embedding_width(model)
    vectors = candidates * width * FLOAT * ACTIVATION_COPIES
    # sampler=hard scores its extra draws without gradients: the gathered rows and their product.
    vectors += batch * negatives_per_example(sampler) * (draws_per_negative(sampler) - 1) * width * FLOAT * 2
    draws = candidates * INDEX * DRAW_COPIES * draws_per_negative(sampler)
    mlp = candidates * sum(width_out for _, width_out in _mlp_layers(model)) * FLOAT * ACTIVATION_COPIES
    # The full softmax scores each distinct user of the batch against every item, a pool sampler against
    # the pool: scores, and for an MLP model the activations autograd keeps for every such pair.
    loss = str(OmegaConf.select(cfg, "loss._target_", default=""))
    pool = 0
    if loss.endswith("FullSoftmaxLoss"):
        pool = num_items
    elif str(sampler.get("_target_", "")).endswith(("SharedPoolSampler", "InBatchSampler")):
        pool = batch if "InBatch" in str(sampler.get("_target_")) else int(sampler.get("num_negatives") or 0)
    pairs = min(batch, max(num_users, 1)) * pool
    catalogue = pairs * FLOAT * (ACTIVATION_COPIES + MLP_KEPT_COPIES * sum(width_out for _, width_out in _mlp_layers(model)))
    return vectors + draws + mlp + catalogue


def draws_per_negative(sampler: dict[str, Any]) -> int:
    """sampler=hard draws `candidates` unseen items per negative and keeps the best scored; the others draw one."""
    return max(1, int(sampler.get("candidates") or 1)) if str(sampler.get("_target_", "")).endswith("HardNegativeSampler") else 1


def negatives_per_example(sampler: dict[str, Any]) -> int:
    """Negatives scored per positive: a per-example sampler's num_negatives; a pool scores each distinct
    user against the pool instead (batch_activations' catalogue term), so none here."""
    if str(sampler.get("_target_", "")).endswith(("SharedPoolSampler", "InBatchSampler")):
        return 0
    return int(sampler.get("num_negatives") or 1)


def sampler_tables(sampler: dict[str, Any], num_users: int) -> int:
    """sampler=retrieved keeps [num_users, candidates] items (int32) and their scores (float32)."""
    if not str(sampler.get("_target_", "")).endswith("RetrievedSampler"):
        return 0
    return num_users * int(sampler.get("candidates") or 0) * 8


def evaluation_chunk(cfg: DictConfig, num_items: int) -> int:
    """Full-ranking evaluation scores a chunk of users against every item: chunk x num_items floats,
    the chunk capped by data.eval_max_scores (datamodule.py), a few copies at once."""
    chunk = int(OmegaConf.select(cfg, "data.eval_chunk_size", default=1024) or 1)
    max_scores = int(OmegaConf.select(cfg, "data.eval_max_scores", default=2**27) or 2**27)
    chunk = max(1, min(chunk, max_scores // max(num_items, 1)))
    layers = _mlp_layers(_plain(cfg.get("model")))
    # PairMLP.score_all ranks in small user slices, yet glibc keeps their freed [items, hidden[0]] blocks in
    # its heap once a training step has raised its mmap threshold: measured, the chunk's slices add up.
    sliced_mlp = chunk * num_items * layers[0][1] * FLOAT if layers else 0
    return chunk * num_items * FLOAT * EVALUATION_COPIES + sliced_mlp


def available_memory() -> int:
    """Bytes this process may still take: /proc/meminfo's MemAvailable, or the cgroup's limit less its
    usage when that is smaller (a container sees the host's meminfo)."""
    candidates = [_meminfo_available()]
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and limit < 2**60:  # "max" (or v1's near-2^63) means no limit
            candidates.append(max(0, limit - (usage or 0)))
    known = [value for value in candidates if value is not None]
    return min(known) if known else 2**62


def check_memory(cfg: DictConfig, num_users: int, num_items: int, available: int | None = None) -> None:
    """Refuse a config whose estimate exceeds REFUSE_ABOVE of the memory available (`available`, else
    what this machine has, plus what this process already holds; or `memory_limit_gib` when set, 0
    turning the check off), naming the largest component and the key whose default saves the most."""
    limit_gib = cfg.get("memory_limit_gib")
    if limit_gib == 0:
        return
    components = estimate(cfg, num_users, num_items)
    needed = sum(component.bytes for component in components)
    if limit_gib is not None:
        budget, where = int(limit_gib * GIB), "memory_limit_gib allows"
    else:
        budget, where = (available if available is not None else available_memory()) + _resident_bytes(), "this machine has"
    if needed <= REFUSE_ABOVE * budget:
        return
    largest = next((component for component in components if component.what != BASELINE), components[0])
    key, default = key_to_lower(cfg, num_users, num_items)
    setting = f"{key}={_shown(OmegaConf.select(cfg, key))}" if key else "this config"
    data = f" with {num_items} items and {num_users} users" if num_users or num_items else ", before the data is counted,"
    advice = f"lower {key} (default {_shown(default)})" if key else "lower data.batch_size or the model's widths"
    raise ConfigError(
        f"{setting}{data} needs about {needed / GIB:.1f} GiB ({largest.bytes / GIB:.1f} GiB for "
        f"{largest.what}), {where} {budget / GIB:.1f} GiB available; {advice}, or set memory_limit_gib=<GiB> if the estimate "
        "is wrong here (0 skips the check)"
    )


def key_to_lower(cfg: DictConfig, num_users: int, num_items: int) -> tuple[str, Any]:
    """Of SIZING_KEYS this config sets, the one whose class default would shrink the estimate most, and
    that default; ("", None) when none would."""
    needed = sum(component.bytes for component in estimate(cfg, num_users, num_items))
    best, best_saving, best_default = "", 0, None
    for key in SIZING_KEYS:
        value, default = OmegaConf.select(cfg, key), _constructor_default(cfg, key)
        if value is None or default is None or value == default:
            continue
        trial = cfg.copy()
        OmegaConf.update(trial, key, default, merge=False)
        users = default if key == "data.num_users" else num_users  # the sizes the data will have follow its config
        items = default if key == "data.num_items" else num_items
        saving = needed - sum(component.bytes for component in estimate(trial, users, items))
        if saving > best_saving:
            best, best_saving, best_default = key, saving, default
    return best, best_default


def _constructor_default(cfg: DictConfig, key: str) -> Any:
    """The default of `key`'s argument in its group's class (`model.dim` -> MatrixFactorization's dim)."""
    group, _, name = key.partition(".")
    target = OmegaConf.select(cfg, f"{group}._target_")
    try:
        classes = get_class(str(target)).__mro__
    except Exception:  # noqa: BLE001 - no class to ask: nothing to suggest for this key
        return None
    for klass in classes:  # a subclass may pass its keywords on to its base's constructor (`**kwargs`)
        parameter = inspect.signature(klass.__init__).parameters.get(name) if "__init__" in vars(klass) else None
        if parameter is not None and parameter.default is not inspect.Parameter.empty:
            return parameter.default
    return None


def config_sizes(cfg: DictConfig) -> tuple[int, int]:
    """Users and items known before any data is read (synthetic data says them); 0 when the data will tell."""
    return int(OmegaConf.select(cfg, "data.num_users", default=0) or 0), int(OmegaConf.select(cfg, "data.num_items", default=0) or 0)


def _embedding_width(model: dict[str, Any]) -> int:
    """Floats per user or item row: MF's dim (+1 bias), HybridMF's dim, NeuMF's GMF and MLP widths."""
    if "dim" in model:
        return int(model["dim"]) + int(bool(model.get("bias")))
    paths = model.get("paths") or ["gmf", "mlp"]
    return int(model.get("gmf_dim") or 0) * ("gmf" in paths) + int(model.get("mlp_dim") or 0) * ("mlp" in paths)


def _mlp_layers(model: dict[str, Any]) -> list[tuple[int, int]]:
    """(inputs, outputs) of each linear layer of the model's MLP; none for a model without one."""
    hidden = [int(width) for width in model.get("hidden") or []]
    if not hidden or ("paths" in model and "mlp" not in (model.get("paths") or [])):
        return []
    side = int(model.get("mlp_dim") or model.get("dim") or 0)
    return [(2 * side, hidden[0]), *zip(hidden, hidden[1:]), (hidden[-1], 1)]


def _plain(node: Any) -> dict[str, Any]:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else {}


def _shown(value: Any) -> str:
    """As typed on the command line: [64,32], not ListConfig's or a tuple's spelling."""
    value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    return f"[{','.join(str(entry) for entry in value)}]" if isinstance(value, (list, tuple)) else str(value)


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None


def _resident_bytes() -> int:
    """This process's resident memory now: already spent, so not in MemAvailable, yet in the estimate."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
