"""Prometheus text exposition with no dependency: counters, gauges and histograms, all on the event loop.

Only the event loop updates these (no locks); values read from the engine thread (batch sizes) are taken
at scrape time. Names follow Prometheus conventions: seconds, `_total` counters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)
JITTER_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

Labels = tuple[tuple[str, str], ...]


def _fmt_labels(labels: Labels, extra: tuple[str, str] | None = None) -> str:
    items = [*labels, extra] if extra else list(labels)
    if not items:
        return ""
    body = ",".join(f'{k}="{v}"'.replace("\n", " ") for k, v in items)
    return "{" + body + "}"


def _fmt(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Counter:
    def __init__(self, name: str, help_text: str) -> None:
        self.name, self.help = name, help_text
        self.values: dict[Labels, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        self.values[key] = self.values.get(key, 0.0) + amount

    def get(self, **labels: str) -> float:
        return self.values.get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        for labels, value in sorted(self.values.items()):
            yield f"{self.name}{_fmt_labels(labels)} {_fmt(value)}"


class Gauge:
    """A value computed at scrape time."""

    def __init__(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self.name, self.help, self.read = name, help_text, read

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} gauge"
        yield f"{self.name} {_fmt(self.read())}"


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...]) -> None:
        self.name, self.help = name, help_text
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.count += 1
        self.sum += value
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
                break

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        cumulative = 0
        for bound, n in zip(self.buckets, self.counts, strict=True):
            cumulative += n
            yield f'{self.name}_bucket{{le="{_fmt(bound)}"}} {cumulative}'
        yield f'{self.name}_bucket{{le="+Inf"}} {self.count}'
        yield f"{self.name}_sum {_fmt(self.sum)}"
        yield f"{self.name}_count {self.count}"


class Metrics:
    """Every metric the server exposes at GET /metrics."""

    def __init__(self) -> None:
        self.sessions_total = Counter("voicegate_sessions_total", "Sessions created.")
        self.utterances_total = Counter("voicegate_utterances_total",
                                        "Utterances ended, by how they ended (eos, cap, empty, cancel, "
                                        "barge_in, error, shutdown).")
        self.audio_seconds_total = Counter("voicegate_audio_seconds_total", "Seconds of speech audio sent.")
        self.errors_total = Counter("voicegate_errors_total", "Error events and refused connections, by code.")
        self.first_audio = Histogram("voicegate_first_audio_latency_seconds",
                                     "First text of an utterance (or its turn to play) -> first audio sent.",
                                     LATENCY_BUCKETS)
        self.first_audio_overhead = Histogram("voicegate_first_audio_server_seconds",
                                              "Server part of first-audio latency: engine frame ready -> sent.",
                                              JITTER_BUCKETS)
        self.bargein = Histogram("voicegate_bargein_latency_seconds",
                                 "VAD decision (arrival of the deciding mic frame) -> stream cancelled and "
                                 "queued audio dropped.", JITTER_BUCKETS)
        self.bargein_onset = Histogram("voicegate_bargein_onset_latency_seconds",
                                       "Estimated speech onset in the mic audio -> barge-in done.",
                                       LATENCY_BUCKETS)
        self.frame_jitter = Histogram("voicegate_frame_jitter_seconds",
                                      "Lateness of paced audio frames against their schedule (headless modes).",
                                      JITTER_BUCKETS)
        self.engine_batch = Histogram("voicegate_engine_batch_size", "Streams stepped together per engine step.",
                                      BATCH_BUCKETS)
        self.gauges: list[Gauge] = []
        self._batch_source: Callable[[], list[int]] | None = None
        self._batch_seen = 0

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self.gauges.append(Gauge(name, help_text, read))

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
        lines: list[str] = []
        for gauge in self.gauges:
            lines += gauge.render()
        for metric in (self.sessions_total, self.utterances_total, self.audio_seconds_total, self.errors_total,
                       self.first_audio, self.first_audio_overhead, self.bargein, self.bargein_onset,
                       self.frame_jitter, self.engine_batch):
            lines += metric.render()
        return "\n".join(lines) + "\n"
