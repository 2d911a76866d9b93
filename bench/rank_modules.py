"""`python -m recsys_lightning.train` as one torchrun rank of bench_scale, writing at exit the modules it imported.

    torchrun --standalone --nproc-per-node W bench/rank_modules.py <train overrides>

A rank imports far more than `import recsys_lightning.train` does as it runs (TorchRec, FBGEMM, the
distributed package, TensorBoard's writer, Hydra's plugins): code, the same at any size of data.
bench_scale's import-only process imports every module any rank imported, so that what it subtracts
from a rank's peak is the code the rank ran, and what is left is what the rank held. The names go to
$RANK_MODULES_DIR/<pid>.txt, one a line.
"""

import atexit
import os
import runpy
import sys
from pathlib import Path


def write_imported_modules() -> None:
    (Path(os.environ["RANK_MODULES_DIR"]) / f"{os.getpid()}.txt").write_text("\n".join(sorted(sys.modules)) + "\n")


if __name__ == "__main__":
    atexit.register(write_imported_modules)
    runpy.run_module("recsys_lightning.train", run_name="__main__", alter_sys=True)
