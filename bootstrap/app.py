"""Builds the application: loads .env and config/ and the event listeners, then the routes when the MQTT
app asks for them."""
from __future__ import annotations

from core import events
from core.app import Application
from core.config import ROOT, Config
from core.router import Router


def create_app(config: Config | None = None) -> Application:
    """`async with create_app() as app:` boots the application and closes its connections on exit.
    Booting reads config and discovers the event listeners of app/listeners.py (or APP_LISTENERS's module)."""
    app = Application(config)
    events.discover(app.config.app.listeners or None)
    return app


def load_routes(app: Application) -> Router:
    """Every `routes/*.py` that defines `router = Router()`, merged in file-name order, set as app.router."""
    from core.router import load_routes as load_directory

    app.router = load_directory(ROOT / "routes")
    return app.router
