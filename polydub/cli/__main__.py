from polydub.cli import app

app()
