"""The floor for the list page: a hello-world Flask app under the app's gunicorn settings.

`gunicorn bench.hello:app -w 2`, started by `bench.list_page` and `bench.all`
the way they start `wsgi:app`. Every GET answers 200 with a short page: what
loopback HTTP, gunicorn's sync workers, Flask's routing and the load
generator cost before the app does any work.
"""

from __future__ import annotations

from flask import Flask

app = Flask(__name__)


@app.get("/")
@app.get("/<path:_path>")
def hello(_path: str = "") -> str:
    return "<!doctype html><title>Hello</title><p>Hello, world.</p>"
