"""The gRPC servicers (rate limit, batch, admin) and their protobuf encoding, the operator
port's routes: what the service answers, whatever carries it."""
