"""The web page's static files (index.html, app.js, style.css), served by ``api/routes/web.py``.

A package only so that the files ship in the wheel as package data."""
