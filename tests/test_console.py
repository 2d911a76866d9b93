"""What a run prints around fit: Lightning's closing line after the last epoch's, and a resume not told
that its own checkpoint folder is not empty (issue 27)."""

import logging
import warnings

import pytest

from recsys_lightning.console import fit_messages

LIGHTNING = logging.getLogger("pytorch_lightning.utilities.rank_zero")
EPOCHS = logging.getLogger("recsys_lightning.callbacks")


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def lines():
    handler = Lines()
    for logger in (LIGHTNING, EPOCHS):
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    yield handler.lines
    for logger in (LIGHTNING, EPOCHS):
        logger.removeHandler(handler)


def test_fit_stopped_at_max_epochs_is_said_after_the_last_epochs_line(lines):
    with fit_messages(resuming=False):
        EPOCHS.info("epoch 0, train/loss 0.6931, 1.0 s")
        LIGHTNING.info("`Trainer.fit` stopped: `max_epochs=2` reached.")  # Lightning says it before on_fit_end ...
        EPOCHS.info("epoch 1, train/loss 0.5000, 1.0 s")  # ... where EpochLog writes the last epoch's line
    LIGHTNING.info("GPU available: True (cuda), used: False")  # other lines pass as they come
    assert lines == [
        "epoch 0, train/loss 0.6931, 1.0 s",
        "epoch 1, train/loss 0.5000, 1.0 s",
        "`Trainer.fit` stopped: `max_epochs=2` reached.",
        "GPU available: True (cuda), used: False",
    ]


def test_only_a_resume_is_not_told_its_checkpoint_folder_is_not_empty():
    folder_warning = "Checkpoint directory /runs/a/checkpoints exists and is not empty."
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        with fit_messages(resuming=True):
            warnings.warn(folder_warning, UserWarning, stacklevel=1)
            warnings.warn("another warning", UserWarning, stacklevel=1)
        with fit_messages(resuming=False):
            warnings.warn(folder_warning, UserWarning, stacklevel=1)
    assert [str(warning.message) for warning in shown] == ["another warning", folder_warning]
