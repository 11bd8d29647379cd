"""The server's API key, as every surface accepts it (docs/openai.md, docs/elevenlabs.md, docs/protocol.md).

A key can come as `Authorization: Bearer KEY`, `xi-api-key: KEY`, `?api_key=KEY`, `?xi_api_key=KEY`, or (ElevenLabs)
in a socket's first message. Comparisons take constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass

Query = Mapping[str, list[str]]  # parse_qs's shape: blank values dropped


@dataclass(frozen=True)
class ApiKey:
    key: str | None  # None or "": every request is authorized

    def authorized(self, headers: Mapping[str, str], query: Query, given: str | None = None) -> bool:
        """Whether the request's key (or `given`, e.g. an ElevenLabs init's `xi_api_key`) is the server's."""
        if not self.key:
            return True
        if given is None:
            header = headers.get("authorization", "")
            given = (header[7:] if header.startswith("Bearer ") else headers.get("xi-api-key")
                     or (query.get("api_key") or query.get("xi_api_key") or [""])[0])
        return hmac.compare_digest(given.encode(), self.key.encode())

    @staticmethod
    def present(headers: Mapping[str, str], query: Query) -> bool:
        """Whether the request carries any key at all (ElevenLabs may send it later, in its first message)."""
        return bool(headers.get("authorization") or headers.get("xi-api-key") or query.get("api_key")
                    or query.get("xi_api_key"))
