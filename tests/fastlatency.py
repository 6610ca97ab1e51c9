"""Latency measured at batch 1 in one short round, reported for every batch size asked for: for tests
of the jobs' plumbing (their tables keep every column), where timing ResNets at batch 128 in 20
rounds would take most of the test's time."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

import compresskit.jobs.report as report_job


@contextmanager
def batch_one_latency() -> Iterator[None]:
    real = report_job.measure_models

    def once(models, shapes, *, batch_sizes, **options):
        options.update(bench_seconds=0.001, rounds=1)
        got = real(models, shapes, batch_sizes=[1], **options)
        return [
            dataclasses.replace(
                m,
                measurement=dataclasses.replace(
                    m.measurement, latency={n: m.measurement.latency[1] for n in batch_sizes}
                ),
                speedup={n: m.speedup[1] for n in batch_sizes},
            )
            for m in got
        ]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(report_job, "measure_models", once)
        yield
