"""Transports: the gRPC services and the small HTTP server."""
