"""The gRPC edge: the hub process, the RPC table, and the pipeline every call goes through.

The pipeline authenticates, admits the call within its department's share, claims its request
id, runs one service function of ``exchange.flows`` and maps its errors to a gRPC status. gRPC
objects (servicer contexts, status codes, metadata) do not leave this package.
"""
