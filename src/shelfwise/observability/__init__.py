"""Logs with request ids and OpenTelemetry traces (``logs``, ``tracing``); the request id of the work at hand lives
in a context variable (``context``). Prometheus metrics are the API's (``api/metrics.py``)."""
