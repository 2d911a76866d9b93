"""trainer=sharded: the models' row tables held by TorchRec, sharded row-wise over the ranks (tables.py), and
the Lightning strategy that hands them over and trains them with optimizers fused into backward (strategy.py).

TorchRec is imported only here, and only when trainer=sharded runs."""
