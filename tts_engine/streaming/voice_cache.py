"""Per-voice state of the streaming engine, built once and shared by all streams of a voice.

A voice's prompt prefix is fixed before any text arrives (notes §1.6): its embedding rows, its talker
KV, and for ICL clones the target-independent part of the ICL block and the codec decoder state primed
on the reference codes. `VoiceCache` keeps them per voice, keyed by content (`Voice.cache_key`: equal
prompts loaded twice share one entry; a freed prompt object can never alias another), least recently
used first out.

Reusing the prefix KV is exact: it is what the same one-row forward over the same rows writes, copied
into the new stream's cache row instead of recomputed.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import torch

from ..model.codec_stream import CodecStreamState
from ..model.layers import KVCache
from ..synthesis.prompt import IclRows, Voice, build_icl_rows
from ..synthesis.tts_model import TTSModel


@dataclass
class VoiceState:
    prefix: torch.Tensor  # (L, H) rows prefilled at admission (ICL: + the reference-only block rows)
    icl: IclRows | None = None
    icl_start: int = 0  # ICL: block rows [0, icl_start) are in `prefix`; the rest wait for target text
    codec: CodecStreamState | None = None  # ICL: decoder state primed on the reference codes
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per talker layer: k, v (Hkv, L, D)

    @property
    def text_offset(self) -> int:
        """Text-track rows the prefill consumes: the first target token, or the ICL block's T2 rows."""
        return self.icl.block_len if self.icl is not None else 1


class VoiceCache:
    def __init__(self, model: TTSModel, size: int, keep_kv: bool) -> None:
        self.model, self.size, self.keep_kv = model, size, keep_kv
        self._states: collections.OrderedDict[tuple, VoiceState] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._states)

    def values(self) -> list[VoiceState]:
        return list(self._states.values())

    def get(self, voice: Voice) -> VoiceState:
        """The voice's state, built on first use."""
        key = voice.cache_key()
        state = self._states.get(key)
        if state is not None:
            self._states.move_to_end(key)
            return state
        model = self.model
        prefix = model.prefix(voice)
        if voice.icl:
            assert voice.ref_codes is not None
            icl = build_icl_rows(model.talker, model.config, voice)
            # Block rows j < R pair reference text with codec rows: no target text. The last block row
            # is always left to the scheduler's ICL prefill: its hidden state gives frame 0.
            start = min(icl.ref_len, icl.block_len - 1)
            prefix = torch.cat([prefix, icl.ref_text[:start] + icl.codec[:start]])
            codec, _ = model.primed_codec_state(voice.ref_codes)
            state = VoiceState(prefix, icl, start, codec)
        else:
            state = VoiceState(prefix)
        self._states[key] = state
        while len(self._states) > self.size:
            self._states.popitem(last=False)
        return state

    def prefill(self, state: VoiceState, row: int) -> None:
        """Put the voice's prefix (positions 0..L-1) into talker cache row `row`: copied from the voice's
        KV when kept, else one forward (whose KV is then kept)."""
        talker = self.model.talker
        length = state.prefix.shape[0]
        caches: list[KVCache] = [c for layer in talker.model.layers if (c := layer.self_attn.kv_cache) is not None]
        if state.kv is not None:
            for cache, (k, v) in zip(caches, state.kv, strict=True):
                cache.k[row, :, :length].copy_(k)
                cache.v[row, :, :length].copy_(v)
            return
        positions = torch.arange(length, device=state.prefix.device)[None]
        talker(state.prefix[None], positions, rows=slice(row, row + 1), kv_len=length)
        if self.keep_kv:
            state.kv = [(c.k[row, :, :length].clone(), c.v[row, :, :length].clone()) for c in caches]
