"""Wire formats read and written at a connection's edge, without I/O.

Each module takes bytes and returns values, or raises its own error: `proxy` (the PROXY
protocol, v1 and v2), `tls` (the server name of a TLS ClientHello), `hostnames` (which route a
server name selects). Nothing here imports a socket or an event loop; the connection stages
that feed them live with the pipeline.
"""
