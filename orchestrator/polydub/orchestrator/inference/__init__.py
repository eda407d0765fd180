"""Typed clients for the models served by Triton, one per capability."""
