"""A Hugging Face Hub for tests, offline: checkpoint repositories in each real repository's own
file layout (random weights, real formats and classes) and a loopback server speaking the Hub's
file API, so the unmodified loading code (transformers, huggingface_hub) runs against them.

``build``: the repositories; ``server``: the HTTP server; ``fixtures``: the pytest fixture.
"""
