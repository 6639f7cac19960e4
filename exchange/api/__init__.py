"""gRPC edge: servicers decode and authenticate, call one service function, map errors."""
