"""Reading a large interaction CSV: seconds and peak memory of `read_interactions` on N rows.

Writes the file once (synthetic rows, string user ids) into a scratch folder, then times the read.

    .venv/bin/python bench/bench_csv_read.py                 # 20,000,000 rows
    .venv/bin/python bench/bench_csv_read.py --rows 1000000
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from recsys_lightning.data.csv import read_interactions
from recsys_lightning.data.synthetic import generate_interactions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000_000)
    parser.add_argument("--folder", default=tempfile.gettempdir())
    args = parser.parse_args()
    path = Path(args.folder) / f"bench_interactions_{args.rows}.csv"
    if not path.exists():
        frame = generate_interactions(138_000, 27_000, args.rows, seed=0)
        frame = frame.assign(user_id="user" + frame.user_id.astype(str)).rename(columns={"user_id": "userId", "item_id": "itemId"})
        start = time.perf_counter()
        frame.to_csv(path, index=False)
        print(f"wrote {path} ({path.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - start:.1f} s")
        del frame
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    start = time.perf_counter()
    frame = read_interactions(path, user_col="userId", item_col="itemId")
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(
        f"read {len(frame):,} rows ({frame.user_id.nunique():,} string user ids) in {seconds:.1f} s, "
        f"{len(frame) / seconds:,.0f} rows/s; peak RSS {peak:.2f} GB (before reading {baseline:.2f} GB)"
    )


if __name__ == "__main__":
    main()
