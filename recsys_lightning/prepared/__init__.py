"""Data prepared once into user-sharded Parquet parts, so each DDP rank reads only its own users."""
