"""Consent, erasure and pseudonymisation (SECURITY.md): what the service consults before storing an event or
answering a request, and what ``DELETE /v1/shoppers`` runs."""
