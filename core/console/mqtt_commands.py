"""run and route:list: the MQTT app's commands."""
from __future__ import annotations

import click

from bootstrap.app import load_routes
from core.console.base import command, print_table
from core.mqtt import MqttApp


@command("run")
async def run(app) -> None:
    """Start the MQTT app: connect, subscribe every route in routes/*.py, call handlers.

    Connects with MQTT_HOST, MQTT_PORT, MQTT_USERNAME, MQTT_PASSWORD and MQTT_CLIENT_ID (TLS when
    MQTT_TLS=true); shared routes subscribe as $share/MQTT_SHARED_GROUP/... . At most
    MQTT_MAX_CONCURRENT messages are handled at once. A lost broker is reconnected with backoff.
    SIGTERM or SIGINT lets in-flight handlers finish and exits 0.
    """
    router = load_routes(app)
    await MqttApp(router, app.config.mqtt, app_name=app.config.app.name).run()


@command("route:list")
async def route_list(app) -> None:
    """Print the routes: pattern, subscription, handler, qos and whether the subscription is shared."""
    router = load_routes(app)
    if not router.routes:
        click.echo("No routes. Define them in routes/mqtt.py.")
        return
    group = app.config.mqtt.shared_group
    rows = [(r.pattern, r.subscription(group), r.handler_name, str(r.qos), "yes" if r.shared else "no")
            for r in router.routes]
    print_table(("Pattern", "Subscription", "Handler", "QoS", "Shared"), rows)

