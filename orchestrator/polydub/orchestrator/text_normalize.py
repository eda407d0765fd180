"""The orchestrator's MMS-TTS tokenizer: ``polydub.serving.tts_tokenizer.TtsTokenizer`` (the spec
the exporter writes and Triton serves), whose missing romaniser is the deployment's fault: a
``ConfigurationError`` that fails the job with what to install, instead of an error retried."""

from __future__ import annotations

from polydub.errors import ConfigurationError
from polydub.serving import tts_tokenizer


class TtsTokenizer(tts_tokenizer.TtsTokenizer):
    def romanize(self, text: str) -> str:
        try:
            return super().romanize(text)
        except tts_tokenizer.RomanizerMissing as exc:
            raise ConfigurationError(str(exc), code="uroman_missing") from None
