"""Rate-limit rules: YAML schema, loading, and the matcher index."""

from ratelimitd.config.index import Match, RateLimitConfig
from ratelimitd.config.loader import config_from_texts, load_config

__all__ = ["Match", "RateLimitConfig", "config_from_texts", "load_config"]
