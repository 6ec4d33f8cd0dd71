"""Alembic environment: migrations run on the connection the service hands over."""

from loyalty_shared.db import run_alembic_env

run_alembic_env()
