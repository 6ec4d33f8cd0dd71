"""The coupon service's own settings (`COUPON_*`): where its neighbours are and how to call them."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class CouponSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COUPON_", extra="ignore")

    points_url: str = ""  # default http://127.0.0.1:<LOYALTY_PORT_BASE + 2>
    segmenter_url: str = ""  # default http://127.0.0.1:<LOYALTY_PORT_BASE + 5>
    member_url: str = ""  # default http://127.0.0.1:<LOYALTY_PORT_BASE + 1>
    # The keys this service presents to its neighbours; default: the first of LOYALTY_API_KEYS.
    points_api_key: str = ""
    segmenter_api_key: str = ""
    member_api_key: str = ""  # needs members:read
    http_timeout_seconds: float = 5.0
    bulk_chunk_size: int = 500  # members per transaction (and per segmenter page) in bulk issue
