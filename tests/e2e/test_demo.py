"""`make demo` in small: the platform comes up, a tiny retailer is replayed through the API, and
the report a marketer reads is written with the lifecycle stages in it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .platform import REPO, free_ports, leftovers

pytestmark = pytest.mark.slow

STAGES = ["prospect", "new", "active", "cooling", "easy_winback", "hard_winback", "lost"]


def test_demo_replays_a_tiny_retailer_and_writes_the_report(tmp_path: Path):
    port_base, kafka_port = free_ports()
    data_dir = tmp_path / "demo"
    report = tmp_path / "demo-report.html"
    done = subprocess.run(
        [
            sys.executable,
            "tools/demo.py",
            "--members",
            "60",
            "--days",
            "30",
            "--data-dir",
            str(data_dir),
            "--report",
            str(report),
            "--port-base",
            str(port_base),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "30/30 days" in done.stdout
    assert "Members by lifecycle stage" in done.stdout

    page = report.read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>")
    for stage in STAGES:
        assert stage.replace("_", " ") in page or stage in page, stage
    assert page.count("<svg") >= 5
    assert 'src="http' not in page and 'href="http' not in page  # self-contained
    assert report.with_suffix(".json").exists()
    assert leftovers(data_dir, kafka_port) == []
