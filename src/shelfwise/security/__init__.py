"""API keys and scopes, rate limits, CORS and request limits (the HTTP side of SECURITY.md)."""
