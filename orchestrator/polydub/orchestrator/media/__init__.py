"""Media stages of the pipeline: probe, extract, stretch, mix and mux with ffmpeg, run safely."""
