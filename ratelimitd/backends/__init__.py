"""Counter stores: in-process memory, and Redis (standalone, Sentinel, Cluster)."""

from ratelimitd.backends.base import Backend, CounterRequest, CounterResult

__all__ = ["Backend", "CounterRequest", "CounterResult"]
