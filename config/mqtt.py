from core.config import MqttConfig, env, env_bool, env_float, env_int
from core.errors import ConfigError

PROTOCOLS = {"3.1.1": "3.1.1", "311": "3.1.1", "4": "3.1.1", "5": "5", "5.0": "5"}


def load() -> MqttConfig:
    protocol = env("MQTT_PROTOCOL", "3.1.1").strip()
    if protocol not in PROTOCOLS:
        raise ConfigError(f"MQTT_PROTOCOL must be 3.1.1 or 5, got {protocol!r}")
    files = {name: env(f"MQTT_{name.upper()}") for name in ("ca_file", "cert_file", "key_file")}
    concurrent = env_int("MQTT_MAX_CONCURRENT", 100)
    if concurrent < 1:
        raise ConfigError(f"MQTT_MAX_CONCURRENT must be at least 1 (messages handled at once), got {concurrent}")
    connect_timeout = env_float("MQTT_CONNECT_TIMEOUT", 5.0)
    if not connect_timeout >= 0:        # NaN too
        raise ConfigError(f"MQTT_CONNECT_TIMEOUT must be a number of seconds, 0 (retry for good) or more, "
                          f"got {connect_timeout:g}")
    return MqttConfig(host=env("MQTT_HOST", "127.0.0.1"), port=env_int("MQTT_PORT", 1883),
                      username=env("MQTT_USERNAME"), password=env("MQTT_PASSWORD"),
                      client_id=env("MQTT_CLIENT_ID"),
                      # a certificate file given is TLS asked for
                      tls=env_bool("MQTT_TLS") or any(files.values()),
                      shared_group=env("MQTT_SHARED_GROUP", "app"),
                      max_concurrent_messages=concurrent, connect_timeout=connect_timeout,
                      clean_session=env_bool("MQTT_CLEAN_SESSION", True), protocol=PROTOCOLS[protocol], **files)
