"""Watching a run while it trains: TensorBoard event files, and a figure redrawn in place in a
notebook. Both are `fit` callbacks (``on_epoch`` takes a `TrainingState`, ``on_step`` a step
number and a loss).

>>> plot = LivePlot()                                   # in a Jupyter notebook
>>> fit(model, train_loader, val_loader, cfg, on_epoch=plot)
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from compresskit.errors import CompresskitError, ParameterError
from compresskit.train import TrainingState

TENSORBOARD_EXTRA = "pip install 'compresskit[tensorboard]'"
TENSORBOARD_DIR = "tensorboard"
TAGS = (("loss/train", "train_loss"), ("loss/val", "val_loss"), ("loss/test", "test_loss"),
        ("accuracy/train", "train_acc"), ("accuracy/val", "val_acc"), ("accuracy/test", "test_acc"),
        ("lr", "lr"))  # fmt: skip


class TensorBoardLog:
    """Event files in `folder` for TensorBoard: per epoch ``loss/train``, ``loss/val``,
    ``accuracy/train``, ``accuracy/val`` and ``lr`` (and ``loss/test``, ``accuracy/test`` when the
    run tracks the test split); per optimizer step ``loss/step``. Steps and
    epochs are the run's own numbers, so a resumed run extends the same curves."""

    def __init__(self, folder: str | Path) -> None:
        self.check_available()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder))

    @staticmethod
    def check_available() -> None:
        """A clear error, naming the `tensorboard` option and the extra, when the package is not
        installed."""
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise ParameterError(
                f"{{0}} needs the optional tensorboard package; install it with {TENSORBOARD_EXTRA}.",
                "tensorboard",
            ) from None

    def step(self, step: int, loss: float) -> None:
        self.writer.add_scalar("loss/step", loss, step)

    def epoch(self, state: TrainingState, *, offset: int = 0) -> None:
        row = state.history[-1]
        epoch = int(row["epoch"]) + offset
        for tag, key in TAGS:
            value = float(row.get(key, math.nan))
            if not math.isnan(value):
                self.writer.add_scalar(tag, value, epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class LivePlot:
    """A `fit` ``on_epoch`` callback that redraws the loss and accuracy curves (train vs
    validation, and test when tracked) in one notebook output cell after every epoch, through
    IPython's display handle. `title` heads the figure."""

    def __init__(self, title: str = "training") -> None:
        try:
            from IPython.display import display
        except ImportError:
            raise CompresskitError("LivePlot draws in a notebook; IPython is not installed.") from None
        self._display = display
        self.title = title
        self.handle = None

    def __call__(self, state: TrainingState) -> None:
        import matplotlib.pyplot as plt

        from compresskit.plots import curves_figure

        figure = curves_figure(pd.DataFrame(state.history), title=self.title)
        if self.handle is None:
            self.handle = self._display(figure, display_id=True)
        else:
            self.handle.update(figure)
        plt.close(figure)
