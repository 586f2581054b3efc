"""The web board's page, stylesheet, script and icon (served by evc/web/app.py)."""
