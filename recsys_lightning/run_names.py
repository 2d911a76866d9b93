"""A run's folder name, which TensorBoard shows as the run's name: what was trained (`run_name`) and, as its
tail, the overrides a user typed (`run_label`).

Runs of one model, loss and sampler differ by what the user changed, so that is what the label carries,
short enough to read in TensorBoard's run list and stable (the same overrides give the same name,
whatever their order on the command line):

    model.dim=128 optimizer.lr=0.01        -> dim-128+lr-0.01
    experiment=ml100k_ncf seed=7           -> ml100k_ncf+seed-7
    optimizer.lr=0.0031415926 (Optuna)     -> lr-0.003142
    model.hidden=[64,32] ~callbacks.early_stopping -> no_early_stopping+hidden-64x32
    loss.l2=0.1 model.l2=300               -> loss.l2-0.1+model.l2-300 (a last part two keys share stays whole)

The name is pasted back into commands (`run_dir=<it>`, `pretrained_from=[<it>,...]`, `tensorboard
--logdir <it>`), so it holds only characters that bash and Hydra's override grammar take unquoted:
ASCII letters and digits, `_`, `-`, `.` and `+` (Hydra's own `key=value,key=value` form would need
quoting everywhere: `=`, `,` and brackets are grammar there). ASCII also keeps the length cap a byte
cap, under the 255 bytes a file name may have. Values are taken as typed: an interpolation such as
`${oc.env:HOME}` is not resolved into a folder name.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import PurePath

# A longer label keeps its start and ends in a hash of the whole: still readable, still unique.
MAX_LENGTH = 80
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")
_NUMBER = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+(\.\d*)?[eE][+-]?\d+)")
_COMPRESSION_SUFFIXES = {".gz", ".bz2", ".xz", ".zip", ".zst"}
_TABLE_SUFFIXES = {".csv", ".tsv", ".tab", ".txt", ".dat"}


def run_label(overrides: Sequence[str], excluded_keys: Sequence[str] = ()) -> str:
    """`_<label>` for the task overrides of a run (Hydra's `hydra.overrides.task`), or "" when none is left
    once `excluded_keys` (the model, loss and sampler already in the name, paths) are dropped."""
    pairs = sorted((_split(override) for override in overrides), key=lambda pair: (pair[0].lstrip("~"), pair))
    pairs = [(key, value) for key, value in pairs if key.lstrip("~") not in set(excluded_keys)]
    if not pairs:
        return ""
    last_parts = Counter(key.rsplit(".", 1)[-1].lstrip("~") for key, _ in pairs)
    label = "+".join(_part(key, value, last_parts) for key, value in pairs)
    if len(label) > MAX_LENGTH:
        digest = hashlib.sha1(label.encode()).hexdigest()[:6]
        label = f"{label[: MAX_LENGTH - 7].rstrip('+-')}-{digest}"
    return f"_{label}"


def run_name(model: str, loss: str, sampler: str, closed_form: bool = False, data_file: str | None = None) -> str:
    """`<model>-<loss>-<sampler>`, or `<model>` alone for a model fitted in closed form (no loss or sampler
    takes part in it), then `-<stem>` of the user's own data file (`data=csv data.path=shop.csv` gives
    `mf-bpr-uniform-shop`), so runs on different files get different names."""
    name = model if closed_form else f"{model}-{loss}-{sampler}"
    return f"{name}-{data_stem(data_file)}" if data_file else name


def data_stem(path: str) -> str:
    """`shop` for `data/shop.csv`, `shop.tsv.gz` or `shop.csv.zip`: the name without its compression and table suffixes."""
    name = PurePath(str(path)).name
    for suffixes in (_COMPRESSION_SUFFIXES, _TABLE_SUFFIXES):
        stem, dot, suffix = name.rpartition(".")
        if dot and stem and f".{suffix.lower()}" in suffixes:
            name = stem
    return name or "data"


def safe_name(name: str) -> str:
    """A user's `run_name` as one folder name of the same safe characters (`exp/v1` would nest folders)."""
    return _UNSAFE.sub("-", str(name))[:MAX_LENGTH] or "run"


def _split(override: str) -> tuple[str, str]:
    """`key=value`, `+key=value`, `++key=value` or `~key[=value]` as (key, value); "+" is dropped, "~" kept."""
    key, _, value = str(override).partition("=")
    return key.strip().lstrip("+"), value.strip()


def _part(key: str, value: str, last_parts: Counter[str]) -> str:
    short_key = key.rsplit(".", 1)[-1].lstrip("~")
    shown_key = _UNSAFE.sub("-", short_key if last_parts[short_key] == 1 else key.lstrip("~"))
    if key.startswith("~"):
        return f"no_{shown_key}"
    shown_value = _shown_value(value)
    if key == "experiment":
        return shown_value
    return f"{shown_key}-{shown_value}"


def _shown_value(value: str) -> str:
    """A list as its items joined by `x` (hidden sizes read as 64x32), a float in four significant digits
    (what a sampler like Optuna's proposes), quotes and spaces dropped, anything else unsafe as `-`."""
    value = re.sub(r"[\s'\"]", "", value)
    if value.startswith("[") and value.endswith("]"):
        return "x".join(_shown_value(item) for item in value[1:-1].split(",") if item) or "empty"
    if _NUMBER.fullmatch(value):
        value = f"{float(value):.4g}"
    return _UNSAFE.sub("-", value.replace("+", "")) or "empty"
