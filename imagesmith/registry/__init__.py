"""Talking to OCI/Docker registries: transport rules, authentication, credentials, client.

``transport`` holds the options and the HTTP rules (TLS, timeouts, retries, redaction),
``credentials`` finds what docker and podman logins stored, ``auth`` answers challenges and
caches tokens, and ``client`` speaks the distribution API on top of them.
"""

from __future__ import annotations

from imagesmith.registry.auth import Challenge, parse_challenges
from imagesmith.registry.client import ManifestResponse, RegistryClient, RegistryPool
from imagesmith.registry.credentials import Credentials, CredentialStore
from imagesmith.registry.transport import RegistryOptions, parse_retry_after, redact_url

__all__ = [
    "Challenge",
    "CredentialStore",
    "Credentials",
    "ManifestResponse",
    "RegistryClient",
    "RegistryOptions",
    "RegistryPool",
    "parse_challenges",
    "parse_retry_after",
    "redact_url",
]
