"""Media with ffmpeg, run safely, for every tier: ``runner`` (the one way ffmpeg/ffprobe are
started), ``sniff`` (the container allow-list), ``probe`` (the one check of user media, with
``Limits`` from Settings), and the pipeline's extract, stretch, mix and mux."""
