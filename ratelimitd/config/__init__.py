"""Rate-limit rules: YAML schema, loading, and the matcher index."""

from ratelimitd.config.index import Match, RateLimitConfig
from ratelimitd.config.loader import load_config

__all__ = ["Match", "RateLimitConfig", "load_config"]
