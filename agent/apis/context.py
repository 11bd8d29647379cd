"""What the compatible APIs need from the server, and nothing more: handed to their routes when mounted."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.apis.keys import ApiKey
from agent.metrics import Metrics
from agent.settings import ApiSettings
from agent.voices.catalogue import ModelInfo

if TYPE_CHECKING:
    from tts_engine.engine import Engine


@dataclass(frozen=True)
class ApiContext:
    engine: Engine  # shared with the sessions: its scheduler batches every stream
    info: ModelInfo  # the voice catalogue and the model's name and kind
    settings: ApiSettings
    key: ApiKey
    metrics: Metrics
    tokenizer: Any  # the model's fast tokenizer (usage counts), or None
    started: float  # the server's start (time.time()), for GET /v1/models
