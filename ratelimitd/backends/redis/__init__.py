"""The Redis backend: the backend itself (backend.py), its lean RESP connection (resp.py),
the redis-py clients for Sentinel and Cluster (client.py), and the Lua twins (lua/)."""
