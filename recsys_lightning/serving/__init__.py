"""From a trained run to answers: rebuild its model from the checkpoint, recommend, find similar items and users."""
