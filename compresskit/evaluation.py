"""How well a classifier's logits match the labels: accuracy, top-k, per class, confusion.

Pure computation on tensors already in memory (no files, no run directories):

>>> report = classification_report(logits, labels, data.classes)   # logits N×C, labels N
>>> report.accuracy, report.top5, report.macro_f1
>>> report.per_class            # class, precision, recall, f1, support
>>> report.most_confused(10)    # true, predicted, count, share

**Ties.** Classes are ranked by (logit descending, class index ascending): among equal logits the
lower class index ranks first, as everywhere else in compresskit. The prediction is the rank-0 class
(``logits.argmax(1)``, which returns the first maximal index), and a sample is top-k correct when its
label's rank is below k, i.e. when fewer than k classes have a larger logit or an equal logit and a
lower index. This does not depend on how ``torch.topk`` orders equal values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from compresskit.errors import CompresskitError

TOP_K_MIN_CLASSES = 11
"""Top-k accuracy is reported only from this many classes on (it says little for 10 or fewer)."""

PER_CLASS_COLUMNS = ("class", "precision", "recall", "f1", "support")
CONFUSED_COLUMNS = ("true", "predicted", "count", "share")


@dataclass(frozen=True, eq=False)
class ClassificationReport:
    """What `classification_report` computes; fractions are in [0, 1].

    classes: the C class names, index i ↔ label i.
    accuracy: top-1 accuracy, the fraction of samples whose prediction is their label.
    top_k: the k of `top5`.
    top5: top-k accuracy (k = `top_k`, 5 unless asked otherwise), the fraction of samples whose label
        ranks among the k highest logits; None when there are 10 classes or fewer.
    per_class: one row per class in label order, columns ``class`` (name), ``precision``,
        ``recall``, ``f1`` (0 where undefined) and ``support`` (samples with that label).
    confusion: int64 C×C counts, rows the true class, columns the predicted one.
    macro_precision, macro_recall, macro_f1: unweighted means of the per-class columns over all C
        classes (a class with no samples and no predictions counts as 0).
    """

    classes: list[str]
    accuracy: float
    top_k: int
    top5: float | None
    per_class: pd.DataFrame
    confusion: np.ndarray
    macro_precision: float
    macro_recall: float
    macro_f1: float

    @property
    def num_samples(self) -> int:
        """N, the number of samples the report covers."""
        return int(self.confusion.sum())

    def most_confused(self, k: int | None = 20) -> pd.DataFrame:
        """The `k` largest off-diagonal cells of the confusion matrix (all of them when k is None).

        Columns: ``true`` and ``predicted`` (class names), ``count`` (samples of the true class
        predicted as the other), ``share`` (count / samples of the true class). Only cells with a
        count above 0; sorted by count descending, then by (true, predicted) class index ascending.
        """
        if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1):
            raise CompresskitError(f"most_confused k must be a positive integer or None, got {k!r}.")
        matrix = self.confusion
        true, predicted = np.nonzero(matrix)  # row-major: (true, predicted) ascending
        off = true != predicted
        true, predicted = true[off], predicted[off]
        counts = matrix[true, predicted]
        order = np.argsort(-counts, kind="stable")[: None if k is None else int(k)]
        true, predicted, counts = true[order], predicted[order], counts[order]
        support = matrix.sum(axis=1)
        names = np.asarray(self.classes, dtype=object)
        return pd.DataFrame(
            {
                "true": names[true].tolist(),
                "predicted": names[predicted].tolist(),
                "count": counts.astype(np.int64),
                "share": counts / support[true],
            },
            columns=list(CONFUSED_COLUMNS),
        )


def classification_report(
    logits: torch.Tensor, labels: torch.Tensor, classes: Sequence[str], top_k: int = 5
) -> ClassificationReport:
    """Accuracy, top-k accuracy, per-class precision/recall/F1 and the confusion matrix.

    `logits` N×C (any float dtype, any device; scores or probabilities work alike), `labels` N
    integer class indices in 0..C-1, `classes` the C class names. Ties: see the module docstring.
    Raises CompresskitError for inputs that do not fit together.
    """
    x, y = _check_inputs(logits, labels, classes, top_k)
    c = x.shape[1]
    predictions = x.argmax(1)  # the first maximal index: ties go to the lowest class
    top5 = None
    if c >= TOP_K_MIN_CLASSES:
        top5 = float((label_rank(x, y) < top_k).double().mean())
    y_np, pred_np = y.numpy(), predictions.numpy()
    every_class = list(range(c))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_np, pred_np, labels=every_class, zero_division=0
    )
    per_class = pd.DataFrame(
        {
            "class": [str(name) for name in classes],
            "precision": precision.astype(np.float64),
            "recall": recall.astype(np.float64),
            "f1": f1.astype(np.float64),
            "support": support.astype(np.int64),
        },
        columns=list(PER_CLASS_COLUMNS),
    )
    return ClassificationReport(
        classes=[str(name) for name in classes],
        accuracy=float((predictions == y).double().mean()),
        top_k=int(top_k),
        top5=top5,
        per_class=per_class,
        confusion=confusion_matrix(y_np, pred_np, labels=every_class).astype(np.int64),
        macro_precision=float(np.mean(precision)),
        macro_recall=float(np.mean(recall)),
        macro_f1=float(np.mean(f1)),
    )


def label_rank(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Rank (int64, N) of each sample's label among its C logits (N×C): 0 for the highest; equal
    logits rank by class index, lowest first. The label is in the top k exactly when rank < k."""
    own = logits.gather(1, labels[:, None])  # N×1
    index = torch.arange(logits.shape[1], device=logits.device)
    ahead = (logits > own) | ((logits == own) & (index[None, :] < labels[:, None]))
    return ahead.sum(1)


def _check_inputs(
    logits: torch.Tensor, labels: torch.Tensor, classes: Sequence[str], top_k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated CPU copies: logits N×C (own float dtype), labels N int64."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or not logits.dtype.is_floating_point:
        raise CompresskitError("logits must be a float tensor of shape N×C (samples × classes).")
    if (
        not isinstance(labels, torch.Tensor)
        or labels.dim() != 1
        or labels.dtype.is_floating_point
        or labels.dtype.is_complex
        or labels.dtype == torch.bool
    ):
        raise CompresskitError("labels must be a 1-D integer tensor (one class index per sample).")
    n, c = logits.shape
    if len(labels) != n:
        raise CompresskitError(f"logits have {n} rows but labels have {len(labels)}; give one label per row.")
    if n == 0:
        raise CompresskitError("logits and labels are empty; at least one sample is needed.")
    if isinstance(classes, str) or len(classes) != c:
        raise CompresskitError(f"classes must name each of the {c} logit columns, got {len(classes)} names.")
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise CompresskitError(f"top_k must be a positive integer, got {top_k!r}.")
    if c >= TOP_K_MIN_CLASSES and top_k > c:
        raise CompresskitError(f"top_k {top_k} is more than the number of classes ({c}).")
    x = logits.detach().cpu()
    y = labels.detach().cpu().to(torch.int64)
    if bool(torch.isnan(x).any()):
        raise CompresskitError("logits contain NaN; every logit must be a number.")
    if int(y.min()) < 0 or int(y.max()) >= c:
        raise CompresskitError(
            f"labels must lie in 0..{c - 1} (one per logit column), found {int(y.min())}..{int(y.max())}."
        )
    return x, y
