"""The HTTP query API's pure parts: parameters, cursors, windows, response types, routes and
the OpenAPI document generated from them. No I/O: the shell is ``live.query_http``."""
