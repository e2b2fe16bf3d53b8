"""WSGI entry point: `gunicorn wsgi:app`, and `flask --app wsgi ...`."""

import gc

from recovery import create_app

app = create_app()

# What loading the app created (~130k objects: modules, CLDR and phone
# metadata) lives as long as the process. Out of the collector's full passes,
# one of which otherwise stalls a request for ~100 ms every few hundred.
gc.freeze()
