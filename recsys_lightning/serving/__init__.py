"""From a trained run to answers: load a checkpoint safely, recommend, find similar items and users."""
