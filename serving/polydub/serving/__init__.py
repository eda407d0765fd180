"""What polydub's Triton python models run (imported as ``polydub.serving``).

Numpy only, so the Triton image installs it without the rest of polydub: each
``model_repository/*/1/model.py`` stays a thin adapter over a function from here.
"""
