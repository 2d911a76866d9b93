"""trainer=sharded: TorchRec tables sharded row-wise over gloo ranks, against one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import ROOT


def _ranks(check: str, world: int, out) -> list[dict]:
    """Run tests/sharded_ranks.py `check` on `world` gloo ranks (one thread each) and read what each rank wrote."""
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={world}",
        str(ROOT / "tests" / "sharded_ranks.py"),
        check,
        str(out),
    ]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(world)]


@pytest.mark.slow
@pytest.mark.parametrize("world", [1, 2, 4])
def test_sharded_lookups_equal_one_plain_table_with_ceil_rows_per_rank(tmp_path, world):
    """10 rows over W ranks: rank r holds rows [r * B, (r + 1) * B) with B = ceil(10 / W) (TorchRec's
    row-wise layout, which the evaluation slice relies on), and every rank's gather equals the plain table's."""
    ranks = _ranks("lookup", world, tmp_path / "out")
    block = -(-10 // world)
    assert [(rank["first"], rank["count"]) for rank in ranks] == [(r * block, min(block, 10 - r * block)) for r in range(world)]
    assert all(rank["equal"] and rank["total"] == 10 for rank in ranks)


@pytest.mark.slow
def test_first_twenty_sgd_losses_at_two_ranks_equal_one_rank(tmp_path):
    """Same global batch, negatives drawn by example (seed, epoch, user, item), table gradients averaged over
    ranks as DDP does: the two ranks' global loss is one process's, step by step, and the tables did move."""
    (single,) = _ranks("losses", 1, tmp_path / "w1")
    pair = _ranks("losses", 2, tmp_path / "w2")
    assert len(single["losses"]) == 20
    assert max(abs(a - b) for a, b in zip(single["losses"], pair[0]["losses"])) < 1e-5
    assert [rank["item_rows"] for rank in pair] == [[0, 100, 200], [100, 100, 200]]
    assert all(rank["moved"] > 1e-3 for rank in [single, *pair])
