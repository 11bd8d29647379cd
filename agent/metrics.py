"""The server's Prometheus metrics on `prometheus_client`, in a registry of each server's own.

A per-server `CollectorRegistry` (never the global one) lets several servers share a process (tests,
benchmarks) without colliding. Only the event loop updates these; values owned by other code (open
sessions, the engine's step counter, its batch sizes) are read at scrape time. The thin wrappers keep the
call sites small (`inc(code=...)`, `observe`, `get`, `count`) and let a benchmark swap a histogram for a
recorder of raw values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client import Counter as PromCounter
from prometheus_client import Histogram as PromHistogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = CONTENT_TYPE_LATEST  # the text format generate_latest writes
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)
JITTER_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
STT_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


class Counter:
    def __init__(self, registry: CollectorRegistry, name: str, help_text: str,
                 labels: tuple[str, ...] = ()) -> None:
        self.name, self.registry = name, registry
        self._metric = PromCounter(name, help_text, labelnames=labels, registry=registry)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        (self._metric.labels(**labels) if labels else self._metric).inc(amount)

    def get(self, **labels: str) -> float:
        return self.registry.get_sample_value(self.name, labels) or 0.0


class Histogram:
    def __init__(self, registry: CollectorRegistry, name: str, help_text: str, buckets: tuple[float, ...]) -> None:
        self.name, self.registry = name, registry
        self._metric = PromHistogram(name, help_text, buckets=buckets, registry=registry)

    def observe(self, value: float) -> None:
        self._metric.observe(value)

    @property
    def count(self) -> int:
        return int(self.registry.get_sample_value(self.name + "_count") or 0)


class _ScrapeGauges(Collector):
    """Gauges computed when scraped. A custom collector: its names are not checked against the counters'
    (`voicegate_sessions` next to the counter `voicegate_sessions_total` is legal in the text format, but
    prometheus_client's own Gauge would refuse it)."""

    def __init__(self) -> None:
        self.gauges: list[tuple[str, str, Callable[[], float]]] = []

    def collect(self) -> Iterator[Metric]:
        for name, help_text, read in self.gauges:
            yield GaugeMetricFamily(name, help_text, value=float(read()))


class Metrics:
    """Every metric the server exposes at GET /metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._gauges = _ScrapeGauges()
        self.registry.register(self._gauges)
        r = self.registry
        self.sessions_total = Counter(r, "voicegate_sessions_total", "Sessions created.")
        self.utterances_total = Counter(r, "voicegate_utterances_total",
                                        "Utterances ended, by how they ended (eos, cap, empty, cancel, "
                                        "barge_in, error, shutdown).", ("ended_by",))
        self.audio_seconds_total = Counter(r, "voicegate_audio_seconds_total", "Seconds of speech audio sent.")
        self.errors_total = Counter(r, "voicegate_errors_total", "Error events and refused connections, by code.",
                                    ("code",))
        self.api_requests_total = Counter(r, "voicegate_api_requests_total",
                                          "Requests to the compatible APIs (openai, elevenlabs), by status.",
                                          ("api", "status"))
        self.first_audio = Histogram(r, "voicegate_first_audio_latency_seconds",
                                     "First text of an utterance (or its turn to play) -> first audio sent.",
                                     LATENCY_BUCKETS)
        self.first_audio_overhead = Histogram(r, "voicegate_first_audio_server_seconds",
                                              "Server part of first-audio latency: engine frame ready -> sent.",
                                              JITTER_BUCKETS)
        self.bargein = Histogram(r, "voicegate_bargein_latency_seconds",
                                 "VAD decision (arrival of the deciding mic frame) -> stream cancelled and "
                                 "queued audio dropped.", JITTER_BUCKETS)
        self.bargein_onset = Histogram(r, "voicegate_bargein_onset_latency_seconds",
                                       "Estimated speech onset in the mic audio -> barge-in done.",
                                       LATENCY_BUCKETS)
        self.frame_jitter = Histogram(r, "voicegate_frame_jitter_seconds",
                                      "Lateness of paced audio frames against their schedule (headless modes).",
                                      JITTER_BUCKETS)
        self.engine_batch = Histogram(r, "voicegate_engine_batch_size", "Streams stepped together per engine step.",
                                      BATCH_BUCKETS)
        self.stt_latency = Histogram(r, "voicegate_stt_latency_seconds",
                                     "End of a user turn (the turn-end decision) -> its final transcript sent.",
                                     STT_BUCKETS)
        self.stt_turns_total = Counter(r, "voicegate_stt_turns_total",
                                       "User turns sent to the recognizer, by outcome (transcribed, empty, "
                                       "failed, busy).", ("outcome",))
        self._batch_source: Callable[[], list[int]] | None = None
        self._batch_seen = 0

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self._gauges.gauges.append((name, help_text, read))

    def track_engine_batches(self, batch_sizes: Callable[[], list[int]]) -> None:
        """The engine appends one batch size per step; new entries are folded in at each scrape."""
        self._batch_source = batch_sizes

    def _fold_batches(self) -> None:
        if self._batch_source is None:
            return
        sizes = self._batch_source()
        n = len(sizes)  # appended by the engine thread; len() and slicing are atomic under the GIL
        if n < self._batch_seen:  # the engine trimmed its list
            self._batch_seen = 0
        for size in sizes[self._batch_seen:n]:
            self.engine_batch.observe(size)
        self._batch_seen = n

    def render(self) -> str:
        self._fold_batches()
        return generate_latest(self.registry).decode()
