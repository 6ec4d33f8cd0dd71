"""HTTP routes for checkins (see the service README)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v1", tags=["checkins"])
