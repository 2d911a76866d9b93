"""The later MovieLens releases without their archives: reading speed and peak memory of a release's parser on
a synthetic ratings file in its exact format, and, with `--train-epochs`, `experiment=ml1m_mf` on synthetic data
of ML-1M's size. The files are random ratings over the release's numbers of users and movies, checked by
structure only (their counts are not the release's), written once into a scratch folder.

    .venv/bin/python bench/bench_movielens_variants.py --variant ml-20m --rows 5000000
    .venv/bin/python bench/bench_movielens_variants.py --variant ml-1m --rows 1000209 --train-epochs 2
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir

from recsys_lightning.config import PROJECT_ROOT, register_resolvers
from recsys_lightning.data import movielens_releases
from recsys_lightning.data.movielens_releases import RELEASES, Release, resolve_release
from recsys_lightning.train import train

# Users x movies to draw ids from: ML-1M's and ML-20M's rated movies as published statistics give them, the others'
# user and movie counts as their READMEs state them. They only size the synthetic ids.
ID_RANGES = {"ml-1m": (6_040, 3_706), "ml-10m": (71_567, 10_681), "ml-20m": (138_493, 26_744), "ml-25m": (162_541, 62_423)}
ID_RANGES |= {"ml-32m": (200_948, 87_585), "ml-latest-small": (610, 9_742)}
CHUNK = 1 << 20


def write_release(folder: Path, release: Release, rows: int) -> None:
    """ratings and movies files as the release writes them (separator, header), random rows."""
    folder.mkdir(parents=True, exist_ok=True)
    users, movies = ID_RANGES[release.name]
    sep = "::" if release.dat else ","
    rng = np.random.default_rng(0)
    with open(folder / release.file("ratings"), "w") as out:
        out.write("" if release.dat else "userId,movieId,rating,timestamp\n")
        for start in range(0, rows, CHUNK):
            size = min(CHUNK, rows - start)
            cells = zip(rng.integers(1, users + 1, size), rng.integers(1, movies + 1, size), rng.integers(1, 11, size) / 2)
            stamps = rng.integers(900_000_000, 1_700_000_000, size)
            out.write("".join(f"{u}{sep}{i}{sep}{r:g}{sep}{t}\n" for (u, i, r), t in zip(cells, stamps)))
    header = "" if release.dat else "movieId,title,genres\n"
    lines = "".join(f"{i}{sep}Movie {i} ({1950 + i % 70}){sep}Drama|Comedy\n" for i in range(1, movies + 1))
    (folder / release.file("movies")).write_text(header + lines)


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=sorted(RELEASES), default="ml-20m")
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--train-epochs", type=int, default=0, help="then train experiment=ml1m_mf this many epochs (ml-1m only)")
    parser.add_argument("--folder", default=tempfile.gettempdir())
    args = parser.parse_args()
    release = replace(RELEASES[args.variant], counts=None)  # random rows: structure only
    data_dir = Path(args.folder) / f"bench_movielens_{args.variant}_{args.rows}"
    if not (data_dir / release.folder / release.file("ratings")).exists():
        write_release(data_dir / release.folder, release, args.rows)
    before = peak_mib()
    start = time.perf_counter()
    loaded = resolve_release(data_dir, release, item_features=("genre", "year"))
    seconds = time.perf_counter() - start
    rows = len(loaded.interactions)
    peak = peak_mib() - before
    print(f"{args.variant}: read {rows:,} ratings in {seconds:.2f} s ({rows / seconds / 1e6:.2f}M rows/s), peak RSS {peak:.0f} MiB")
    print(f"  above imports ({peak * 2**20 / rows:.0f} bytes per rating); load {os.getloadavg()[0]:.1f}")
    if args.train_epochs:
        if args.variant != "ml-1m":
            parser.error("--train-epochs trains experiment=ml1m_mf: use --variant ml-1m")
        train_ml1m(data_dir, release, args.train_epochs)


def train_ml1m(data_dir: Path, release: Release, epochs: int) -> None:
    """experiment=ml1m_mf as a user runs it, on the synthetic folder (the release's counts lifted)."""
    movielens_releases.RELEASES["ml-1m"] = release
    register_resolvers()
    overrides = ["experiment=ml1m_mf", f"paths.data_dir={data_dir}", f"paths.run_dir={tempfile.mkdtemp(dir=data_dir)}", "run_name=bench"]
    quiet = [f"trainer.max_epochs={epochs}", "callbacks.progress_bar.refresh_rate=0", "projector.max_items=0"]
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides + quiet)
    before = peak_mib()
    metrics = train(cfg)
    print(
        f"ml1m_mf: {epochs} epochs in {metrics['train_seconds']:.1f} s training ({metrics['train_seconds'] / epochs:.0f} s an epoch with "
        f"validation), peak RSS {peak_mib() - before:.0f} MiB above the read; load {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
