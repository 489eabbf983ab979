"""ratelimitd's own gRPC server over HTTP/2 (see server.py for why)."""
