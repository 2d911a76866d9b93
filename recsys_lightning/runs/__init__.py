"""A run folder and its files (checkpoints, metrics.json, Hydra's records, the lock), all read as untrusted.

Training, resume, evaluate and serving find, load and check another run's files only through this room;
it imports no entry point and nothing from serving.
"""
