"""The sandbox's parts, built once per app and reached from views through `current()`."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from recovery.sandbox.config import Config
from recovery.sandbox.faults import Faults
from recovery.sandbox.store import Store
from recovery.sandbox.webhooks import Dispatcher

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
