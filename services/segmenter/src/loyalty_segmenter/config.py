"""Settings of the segmenter's own rules (env prefix SEGMENTER_), with the contract's defaults."""

from __future__ import annotations

from functools import lru_cache

from pydantic_settings import BaseSettings, SettingsConfigDict

from .domain.churn import ChurnModel
from .domain.lifecycle import BuyerWeightCuts, StageWindows
from .domain.profile import ProfileRules


class SegmenterConfig(BaseSettings):
    """e.g. SEGMENTER_NEW_DAYS=30 makes `new` last 30 days."""

    model_config = SettingsConfigDict(env_prefix="SEGMENTER_", extra="ignore")

    new_days: int = 45
    cooling_days: int = 90
    easy_winback_days: int = 180
    hard_winback_days: int = 360
    medium_orders: int = 2
    heavy_orders: int = 5
    tag_min_share: float = 0.25
    max_tags: int = 3

    def rules(self) -> ProfileRules:
        return ProfileRules(
            windows=StageWindows(
                new=self.new_days,
                cooling=self.cooling_days,
                easy_winback=self.easy_winback_days,
                hard_winback=self.hard_winback_days,
            ),
            weights=BuyerWeightCuts(medium=self.medium_orders, heavy=self.heavy_orders),
            churn=ChurnModel(
                default_gap_days=float(self.new_days), lost_after_days=self.hard_winback_days
            ),
            tag_min_share=self.tag_min_share,
            max_tags=self.max_tags,
        )


@lru_cache(maxsize=1)
def profile_rules() -> ProfileRules:
    return SegmenterConfig().rules()
