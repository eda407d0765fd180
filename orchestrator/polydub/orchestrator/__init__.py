"""The dubbing pipeline: stateless workers that consume JetStream job messages and run stages."""
