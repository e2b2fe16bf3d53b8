"""The sandbox's parts, built once per app and reached from views through `current()`."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from stripe_sandbox.config import Config
from stripe_sandbox.faults import Faults
from stripe_sandbox.store import Store
from stripe_sandbox.webhooks import Dispatcher

EXTENSION = "stripe_sandbox"


@dataclass
class Sandbox:
    config: Config
    store: Store
    faults: Faults
    dispatcher: Dispatcher


def current() -> Sandbox:
    sandbox: Sandbox = current_app.extensions[EXTENSION]
    return sandbox
