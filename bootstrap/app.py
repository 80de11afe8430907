"""Builds the application: loads .env and config/, then the routes when the MQTT app asks for them."""
from __future__ import annotations

from core.app import Application
from core.config import Config


def create_app(config: Config | None = None) -> Application:
    """`async with create_app() as app:` boots the application and closes its connections on exit."""
    return Application(config)
