"""Export checkpoints to ONNX and lay them out as a Triton model repository.

Each model family (whisper, nllb, mms_tts, diarization, vad, gender) registers a ``FamilyExporter``
in ``registry.py``; ``polydub models export --preset NAME --target cpu|gpu`` runs them all.
"""
