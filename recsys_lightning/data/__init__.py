"""Where interactions come from and how they become training and evaluation batches."""
