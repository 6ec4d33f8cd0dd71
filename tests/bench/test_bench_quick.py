"""The benchmark harness runs end to end in its quick mode and reports honest numbers: the
pipeline's balances are right, and each figure stands next to its bound (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_quick_benchmark_produces_the_table(tmp_path: Path):
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--quick",
            "--scenarios",
            "pipeline",
            "--orders",
            "2000",
            "--members",
            "200",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    result = json.loads((tmp_path / "latest.json").read_text())
    pipeline = result["pipeline"]
    assert pipeline["correct"] is True
    for path in ("raw_consumer", "raw_database", "naive_per_event", "points_service"):
        assert pipeline[path]["per_second"] > 0 and pipeline[path]["cpu_s_per_1000"] >= 0
    assert pipeline["bound_per_second"] == min(
        pipeline["raw_consumer"]["per_second"], pipeline["raw_database"]["per_second"]
    )
    assert "| points service (the real pipeline) |" in (tmp_path / "latest.md").read_text()
