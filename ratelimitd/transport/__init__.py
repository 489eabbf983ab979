"""The wire protocols the service speaks: HTTP/2 (gRPC) with its sans-I/O core, HTTP/1.1
(the operator port), listening sockets and TLS."""
