"""What serving needs besides the weights: raw ids, what each user has seen, popularity, titles.

It travels inside every checkpoint as tensors, strings and lists only, so a checkpoint loads with
`torch.load(weights_only=True)` and answers requests without the training data.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from recsys_lightning.data.sparse import UserItemCSR
from recsys_lightning.errors import quote

PARTS = ("train", "valid", "test")
STATE_VERSION = 1
INT64 = np.iinfo(np.int64)
CANONICAL_INT = re.compile(r"0|-?[1-9][0-9]{0,18}")  # the one spelling of an int64: no sign, zeros or spaces


def item_titles(item_info: pd.DataFrame) -> list[str] | None:
    """One title per row of `item_info` (items in index order; "" where an item has none), or None when no item has one."""
    if "title" in item_info and item_info["title"].notna().any():
        return item_info["title"].fillna("").astype(str).tolist()
    return None


@dataclass(frozen=True)
class Catalogue:
    """Indices <-> raw ids, each user's seen items tagged by split part, training popularity, titles.

    `seen.values` holds the part of each entry (0 train, 1 valid, 2 test), so serving can hide
    everything a user has seen, or, to reproduce the test metrics, only train and valid items.
    """

    user_ids: pd.Index
    item_ids: pd.Index
    seen: UserItemCSR
    popularity: Tensor
    titles: list[str] | None

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @classmethod
    def from_parts(cls, user_ids: pd.Index, item_ids: pd.Index, parts: Sequence[UserItemCSR], item_info: pd.DataFrame) -> Catalogue:
        """Built from the train, valid and test positives (in PARTS order) and the item metadata."""
        num_users, num_items = len(user_ids), len(item_ids)
        all_users = torch.arange(num_users)
        rows, items, codes = [], [], []
        for code, part in enumerate(parts):
            part_rows, part_items = part.coordinates(all_users)
            rows.append(part_rows)
            items.append(part_items)
            codes.append(torch.full_like(part_rows, code, dtype=torch.int8))
        seen = UserItemCSR.from_pairs(torch.cat(rows), torch.cat(items), num_users, num_items, values=torch.cat(codes))
        return cls(user_ids=user_ids, item_ids=item_ids, seen=seen, popularity=parts[0].counts_per_item(), titles=item_titles(item_info))

    def user_index(self, raw_id: Any) -> int | None:
        """Index of a raw user id, or None when the id is unknown."""
        return _lookup(self.user_ids, raw_id)

    def item_index(self, raw_id: Any) -> int | None:
        """Index of a raw item id, or None when the id is unknown."""
        return _lookup(self.item_ids, raw_id)

    def seen_in(self, parts: Iterable[str]) -> UserItemCSR:
        """Each user's items from the given parts (names from PARTS)."""
        codes = [_part_code(part) for part in parts]
        users = torch.arange(self.num_users)
        rows, items = self.seen.coordinates(users)
        keep = torch.isin(self.seen.values, torch.tensor(codes, dtype=self.seen.values.dtype))
        return UserItemCSR.from_pairs(rows[keep], items[keep], self.num_users, self.num_items)

    def title_of(self, items: Sequence[int]) -> list[str]:
        return [self.titles[i] for i in items] if self.titles else [""] * len(items)

    def to_state(self) -> dict[str, Any]:
        """Tensors, strings and lists only: what `torch.load(weights_only=True)` accepts."""
        return {
            "version": STATE_VERSION,
            "user_ids": _ids_to_state(self.user_ids),
            "item_ids": _ids_to_state(self.item_ids),
            "seen_indptr": self.seen.indptr,
            "seen_items": self.seen.indices.to(torch.int32),
            "seen_parts": self.seen.values,
            "popularity": self.popularity,
            "titles": self.titles,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Catalogue:
        """The catalogue `to_state` wrote, read from an untrusted file: MalformedCatalogue, naming what is
        wrong, unless every part has the type, shape and range serving relies on (each id once; each user's
        items sorted, distinct and in the catalogue; parts 0-2), since a crafted one would otherwise fail
        deep inside ranking or, with an id listed twice, silently answer for the wrong user or item."""
        if not isinstance(state, dict) or set(state) != STATE_KEYS:
            found = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
            raise MalformedCatalogue(f"its keys are {str(found)[:200]}, not {', '.join(sorted(STATE_KEYS))}")
        user_ids, item_ids = _checked_ids(state["user_ids"], "user_ids"), _checked_ids(state["item_ids"], "item_ids")
        num_users, num_items = len(user_ids), len(item_ids)
        indptr = _checked_vector(state["seen_indptr"], "seen_indptr", (torch.int64,), num_users + 1)
        items = _checked_vector(state["seen_items"], "seen_items", (torch.int32, torch.int64))
        parts = _checked_vector(state["seen_parts"], "seen_parts", (torch.int8,), len(items))
        popularity = _checked_vector(state["popularity"], "popularity", (torch.int64,), num_items)
        counts = indptr.diff()
        if int(indptr[0]) != 0 or int(indptr[-1]) != len(items) or bool((counts < 0).any()):
            raise MalformedCatalogue(f"seen_indptr does not run from 0 up to the {len(items)} seen items, never decreasing")
        if len(items) and not 0 <= int(items.min()) <= int(items.max()) < num_items:
            raise MalformedCatalogue(f"seen_items holds item indices outside [0, {num_items})")
        rows = torch.repeat_interleave(torch.arange(num_users), counts)
        if bool(((items.diff() <= 0) & (rows.diff() == 0)).any()):
            raise MalformedCatalogue("a user's seen_items are not sorted and distinct")
        if len(parts) and not 0 <= int(parts.min()) <= int(parts.max()) < len(PARTS):
            raise MalformedCatalogue(f"seen_parts holds codes outside 0-{len(PARTS) - 1} ({', '.join(PARTS)})")
        if bool((popularity < 0).any()):
            raise MalformedCatalogue("popularity holds negative counts")
        titles = state["titles"]
        if titles is not None and (type(titles) is not list or len(titles) != num_items or not all(type(title) is str for title in titles)):
            raise MalformedCatalogue(f"titles is not a list of {num_items} strings, one per item")
        seen = UserItemCSR(indptr, items.long(), num_items, parts)
        return cls(user_ids, item_ids, seen, popularity, titles)


class MalformedCatalogue(ValueError):
    """A catalogue read from a file is not one `to_state` writes; the message says what is wrong."""


STATE_KEYS = frozenset({"version", "user_ids", "item_ids", "seen_indptr", "seen_items", "seen_parts", "popularity", "titles"})


def _checked_vector(value: Any, name: str, dtypes: tuple[torch.dtype, ...], length: int | None = None) -> Tensor:
    """`value` as a dense 1-D tensor of one of `dtypes` (and `length` entries), else MalformedCatalogue."""
    if not isinstance(value, Tensor) or value.layout != torch.strided or value.dim() != 1 or value.dtype not in dtypes:
        found = f"a {value.dtype} tensor of shape {list(value.shape)}" if isinstance(value, Tensor) else f"a {type(value).__name__}"
        raise MalformedCatalogue(f"{name} is {found[:120]}, not a 1-D {' or '.join(map(str, dtypes))} tensor")
    if length is not None and len(value) != length:
        raise MalformedCatalogue(f"{name} has {len(value)} entries, not {length}")
    return value


def _checked_ids(value: Any, name: str) -> pd.Index:
    """Raw ids as `_ids_to_state` writes them (an int64 tensor, or a list of strings), each listed once."""
    if isinstance(value, list):
        if not all(type(raw_id) is str for raw_id in value):
            raise MalformedCatalogue(f"{name} is a list holding something other than strings")
        ids = pd.Index(value, dtype=object)
    else:
        ids = pd.Index(_checked_vector(value, name, (torch.int64,)).numpy())
    if not len(ids):
        raise MalformedCatalogue(f"{name} is empty")
    if not ids.is_unique:
        raise MalformedCatalogue(f"{name} lists {quote(ids[ids.duplicated()][0], 40)} more than once")
    return ids


def _part_code(part: str) -> int:
    if part not in PARTS:
        raise ValueError(f"{part!r} is not a split part: use {', '.join(PARTS)}")
    return PARTS.index(part)


def _ids_to_state(ids: pd.Index) -> Tensor | list[str]:
    """Integer ids as one int64 tensor (compact) when every one fits; anything else (text, 30-digit
    numbers) as strings, which serving then compares as text."""
    values = np.asarray(ids)
    if values.dtype.kind == "i" or (values.dtype.kind == "u" and (not len(values) or values.max() <= INT64.max)):
        return torch.from_numpy(values.astype(np.int64))
    if values.dtype == object and pd.api.types.infer_dtype(values, skipna=False) == "integer":
        try:
            return torch.from_numpy(values.astype(np.int64))
        except OverflowError:
            pass
    return [str(value) for value in values]


def _lookup(ids: pd.Index, raw_id: Any) -> int | None:
    """Raw ids from a command line arrive as int or str whatever the data's type; nothing is coerced.

    Integer ids accept an int or the exact decimal text of one (`7`, not `07`, `+7`, ` 7` or `7.0`);
    text ids accept text as is and an int as its decimal text (Hydra reads `user_id=42` as 42).
    Floats and booleans are never ids: `1.9` and `true` are unknown, not users 1 and 1.
    """
    if isinstance(raw_id, (bool, np.bool_)) or not isinstance(raw_id, (int, np.integer, str)):
        return None
    if pd.api.types.is_integer_dtype(ids.dtype):
        if isinstance(raw_id, str) and not CANONICAL_INT.fullmatch(raw_id):
            return None
        key: Any = int(raw_id)
        if not INT64.min <= key <= INT64.max:
            return None
    elif isinstance(raw_id, str):
        key = raw_id
    elif abs(raw_id) < 10**4000:  # beyond, str() of an int raises (Python's digit limit)
        key = str(int(raw_id))
    else:
        return None
    position = ids.get_indexer([key])[0]
    return None if position < 0 else int(position)
