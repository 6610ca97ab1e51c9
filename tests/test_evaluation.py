"""classification_report against slow Python-loop references, on random data with ties."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from compresskit.errors import CompresskitError
from compresskit.evaluation import ClassificationReport, classification_report, label_rank


def _random_case(n: int, c: int, seed: int, levels: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Logits on a grid of `levels` values (so many ties, including at the top), labels biased
    towards agreeing with the logits so every kind of cell occurs."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randint(0, levels, (n, c), generator=g).float()
    labels = torch.randint(0, c, (n,), generator=g)
    lucky = torch.rand(n, generator=g) < 0.4
    logits[lucky, labels[lucky]] = levels  # a clear (or tied, see below) win for 40%
    tied = torch.rand(n, generator=g) < 0.2
    rows = tied.nonzero().flatten()
    logits[rows, (labels[rows] + 1) % c] = logits[rows, labels[rows]]  # exact ties with the label
    return logits, labels, [f"class_{i:03d}" for i in range(c)]


def _ranking(row: list[float]) -> list[int]:
    """Classes by (logit descending, index ascending): the documented tie rule."""
    return sorted(range(len(row)), key=lambda j: (-row[j], j))


def _reference(logits: torch.Tensor, labels: torch.Tensor, k: int) -> dict:
    rows, ys = logits.tolist(), labels.tolist()
    c = logits.shape[1]
    preds, in_top = [], []
    for row, y in zip(rows, ys, strict=True):
        ranking = _ranking(row)
        preds.append(ranking[0])
        in_top.append(y in ranking[:k])
    confusion = [[0] * c for _ in range(c)]
    for y, p in zip(ys, preds, strict=True):
        confusion[y][p] += 1
    precision, recall, f1, support = [], [], [], []
    for i in range(c):
        tp = confusion[i][i]
        predicted = sum(confusion[r][i] for r in range(c))
        actual = sum(confusion[i])
        p = tp / predicted if predicted else 0.0
        r = tp / actual if actual else 0.0
        precision.append(p)
        recall.append(r)
        f1.append(2 * p * r / (p + r) if p + r else 0.0)
        support.append(actual)
    cells = [(confusion[i][j], i, j) for i in range(c) for j in range(c) if i != j and confusion[i][j] > 0]
    cells.sort(key=lambda t: (-t[0], t[1], t[2]))
    return {
        "accuracy": sum(p == y for p, y in zip(preds, ys, strict=True)) / len(ys),
        "topk": sum(in_top) / len(ys),
        "confusion": confusion,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": support,
        "cells": cells,
    }


@pytest.mark.parametrize(("n", "c", "levels", "k"), [(3000, 100, 6, 5), (700, 10, 4, 5), (2000, 40, 3, 3)])
def test_matches_loop_reference(n, c, levels, k):
    logits, labels, classes = _random_case(n, c, seed=c, levels=levels)
    ref = _reference(logits, labels, k)
    report = classification_report(logits, labels, classes, top_k=k)
    assert isinstance(report, ClassificationReport)
    assert report.classes == classes
    assert report.num_samples == n
    assert report.accuracy == pytest.approx(ref["accuracy"], abs=1e-12)
    if c > 10:
        assert report.top_k == k
        assert report.top5 == pytest.approx(ref["topk"], abs=1e-12)
        assert report.top5 > report.accuracy  # the grid makes the top k wider than the top 1
    else:
        assert report.top5 is None
    assert report.confusion.dtype == np.int64
    assert report.confusion.shape == (c, c)
    assert report.confusion.tolist() == ref["confusion"]
    table = report.per_class
    assert list(table.columns) == ["class", "precision", "recall", "f1", "support"]
    assert table["class"].tolist() == classes
    np.testing.assert_allclose(table["precision"], ref["precision"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(table["recall"], ref["recall"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(table["f1"], ref["f1"], rtol=0, atol=1e-12)
    assert table["support"].tolist() == ref["support"]
    assert report.macro_precision == pytest.approx(np.mean(ref["precision"]), abs=1e-12)
    assert report.macro_recall == pytest.approx(np.mean(ref["recall"]), abs=1e-12)
    assert report.macro_f1 == pytest.approx(np.mean(ref["f1"]), abs=1e-12)
    for limit in (20, 5, None):
        confused = report.most_confused() if limit == 20 else report.most_confused(limit)
        expected = ref["cells"] if limit is None else ref["cells"][:limit]
        assert list(confused.columns) == ["true", "predicted", "count", "share"]
        assert confused["true"].tolist() == [classes[i] for _, i, _ in expected]
        assert confused["predicted"].tolist() == [classes[j] for _, _, j in expected]
        assert confused["count"].tolist() == [count for count, _, _ in expected]
        np.testing.assert_allclose(
            confused["share"], [count / ref["support"][i] for count, i, _ in expected], rtol=0, atol=1e-12
        )
    assert len(report.most_confused(None)) == len(ref["cells"]) > 20  # ties in count did occur
    counts = [cell[0] for cell in ref["cells"]]
    assert len(set(counts)) < len(counts)  # so the (true, predicted) tie-break was exercised


def test_ties_follow_the_documented_rule_not_topk_order():
    # Label 3 ties with classes 0..5 at the top: it ranks behind 0, 1, 2 only.
    logits = torch.zeros(2, 12)
    logits[:, :6] = 1.0
    labels = torch.tensor([3, 5])
    assert label_rank(logits, labels).tolist() == [3, 5]
    classes = [str(i) for i in range(12)]
    assert classification_report(logits, labels, classes, top_k=4).top5 == 0.5  # 3 in, 5 out
    assert classification_report(logits, labels, classes, top_k=6).top5 == 1.0
    report = classification_report(logits, labels, classes)
    assert report.accuracy == 0.0  # both predicted as class 0, the lowest tied index
    assert report.confusion[3, 0] == report.confusion[5, 0] == 1
    # rank over every label equals a slow count of classes ahead of it
    logits, labels, _ = _random_case(500, 30, seed=7, levels=3)
    slow = [_ranking(row).index(y) for row, y in zip(logits.tolist(), labels.tolist(), strict=True)]
    assert label_rank(logits, labels).tolist() == slow


def test_small_example_by_hand():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 3.0, 1.0], [1.0, 0.0, 5.0]])
    labels = torch.tensor([0, 1, 2, 0])
    report = classification_report(logits, labels, ["cat", "dog", "emu"])
    assert report.accuracy == 0.5
    assert report.top5 is None
    assert report.confusion.tolist() == [[1, 0, 1], [0, 1, 0], [0, 1, 0]]
    expected = pd.DataFrame(
        {
            "class": ["cat", "dog", "emu"],
            "precision": [1.0, 0.5, 0.0],
            "recall": [0.5, 1.0, 0.0],
            "f1": [2 / 3, 2 / 3, 0.0],
            "support": [2, 1, 1],
        }
    )
    pd.testing.assert_frame_equal(report.per_class, expected)
    assert report.macro_f1 == pytest.approx(4 / 9)
    confused = report.most_confused()
    assert confused.to_dict("list") == {
        "true": ["cat", "emu"],
        "predicted": ["emu", "dog"],
        "count": [1, 1],
        "share": [0.5, 1.0],
    }


def test_perfect_predictions_have_no_confusion():
    labels = torch.arange(12).repeat(3)
    logits = torch.nn.functional.one_hot(labels, 12).double()
    report = classification_report(logits, labels, [f"c{i}" for i in range(12)])
    assert report.accuracy == report.top5 == report.macro_f1 == 1.0
    assert report.most_confused().empty
    assert list(report.most_confused().columns) == ["true", "predicted", "count", "share"]


@pytest.mark.parametrize(
    ("logits", "labels", "classes", "top_k", "fragment"),
    [
        (torch.zeros(4), torch.zeros(4, dtype=torch.long), ["a"], 5, "N×C"),
        (torch.zeros(4, 2, dtype=torch.long), torch.zeros(4, dtype=torch.long), ["a", "b"], 5, "N×C"),
        (torch.zeros(4, 2), torch.zeros(4), ["a", "b"], 5, "integer"),
        (torch.zeros(4, 2), torch.zeros(3, dtype=torch.long), ["a", "b"], 5, "one label per row"),
        (torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), ["a", "b"], 5, "empty"),
        (torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), ["a"], 5, "2 logit columns"),
        (torch.zeros(4, 2), torch.tensor([0, 1, 2, 0]), ["a", "b"], 5, "0..1"),
        (torch.zeros(4, 2), torch.tensor([0, 1, -1, 0]), ["a", "b"], 5, "0..1"),
        (torch.full((4, 2), float("nan")), torch.zeros(4, dtype=torch.long), ["a", "b"], 5, "NaN"),
        (torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), ["a", "b"], 0, "top_k"),
        (torch.zeros(4, 12), torch.zeros(4, dtype=torch.long), list("abcdefghijkl"), 13, "top_k"),
    ],
)
def test_bad_input_is_refused(logits, labels, classes, top_k, fragment):
    with pytest.raises(CompresskitError, match=fragment):
        classification_report(logits, labels, classes, top_k=top_k)


def test_most_confused_refuses_bad_k():
    report = classification_report(torch.eye(3), torch.arange(3), ["a", "b", "c"])
    for k in (0, -1, 2.5, True):
        with pytest.raises(CompresskitError, match="most_confused"):
            report.most_confused(k)
