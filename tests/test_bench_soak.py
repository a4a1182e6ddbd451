"""The soak scenario's windows, verdicts and chart, and one tiny soak run with churn."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.scenarios.soak import (
    CHART_ROWS,
    _columns,
    chart,
    p99_verdict,
    slope_mb_per_h,
    windows,
)

ROOT = Path(__file__).resolve().parents[1]


def test_short_runs_still_get_three_windows() -> None:
    """A short --duration is cut into 3 equal windows; a long one into windows of 5 min."""
    assert windows(90, 300) == (3, 30.0)
    assert windows(1800, 300) == (6, 300.0)
    n, seconds = windows(1000, 300)
    assert n == 3 and seconds == pytest.approx(1000 / 3)


def test_p99_is_unstable_when_a_window_doubles_the_median() -> None:
    """After the warm-up, one window's p99 above 2 x median + 1 ms fails; the warm-up's not."""
    assert p99_verdict([9.0, 2.0, 2.2, 2.1, 2.5], 50.0)[0]
    stable, median, limit = p99_verdict([2.0, 2.0, 2.2, 2.1, 6.0], 50.0)
    assert not stable and median == pytest.approx(2.15) and limit == pytest.approx(5.3)
    assert not p99_verdict([1.0, 60.0, 60.0], 50.0)[0]  # steady but over --max-p99-ms


def test_rss_trend_is_in_mb_per_hour() -> None:
    """A steady 10 MB growth over an hour of samples is a trend of +10 MB/h."""
    points = [(t * 60.0, 100 * 2**20 + int(t / 60 * 10 * 2**20)) for t in range(61)]
    assert slope_mb_per_h(points) == pytest.approx(10.0, rel=1e-3)


def test_chart_fills_columns_and_marks_the_limit_row() -> None:
    """Each column is filled up to its value; the limit row shows '-' above short columns."""
    rows = chart([0.5, 3.0], 0.0, 3.0, "{:.1f}", mark=1.6)
    assert len(rows) == CHART_ROWS
    cells = [r.split("|", 1)[1] for r in rows]
    assert all(c[1] == "#" for c in cells)  # the full column
    assert [c[0] for c in cells] == [" ", " ", "-", " ", " ", "#"]  # the mark in [1.5, 2)
    assert "1.6" in rows[2] and "3.0" in rows[0] and "0.0" in rows[-1]


def test_chart_columns_without_a_sample_repeat_the_one_before() -> None:
    """RSS columns between 1 s samples show the last sample (never 0 MB); p99 columns show
    their window's p99; the axis marks each window's end."""
    rss = [(0.5, 100 * 2**20), (10.0, 110 * 2**20)]
    cols, p99s, axis = _columns(1.0, 13.0, [1.0, 7.0, 13.0], rss, [2.0, 3.0])
    assert min(cols) == 100.0 and cols[-1] == 110.0
    assert p99s[0] == 2.0 and p99s[-1] == 3.0
    assert axis.count("+") == 2 and axis.endswith("+")


def test_tiny_soak_loses_nothing_through_churn() -> None:
    """A 6 s soak (memory backend, 200 connections, 20 replaced per second) ends with every
    delivery accounted for, the replacements made and every connection open per window."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "soak",
            "--duration",
            "6",
            "--conns",
            "200",
            "--users",
            "500",
            "--rate",
            "100",
            "--backend",
            "memory",
            "--nice",
            "0",
            "--no-save",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(record["windows"]) == 3
    assert record["verdicts"]["lost"], record["windows"]
    assert sum(w["expected"] for w in record["windows"]) > 0
    assert sum(w["churn"]["replaced"] for w in record["windows"]) >= 60
    assert all(w["open_connections"] == 200 for w in record["windows"])
    assert record["verdicts"]["connections"]
