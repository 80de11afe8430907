from core.config import MqttConfig, env, env_bool, env_float, env_int


def load() -> MqttConfig:
    return MqttConfig(host=env("MQTT_HOST", "127.0.0.1"), port=env_int("MQTT_PORT", 1883),
                      username=env("MQTT_USERNAME"), password=env("MQTT_PASSWORD"),
                      client_id=env("MQTT_CLIENT_ID"), tls=env_bool("MQTT_TLS"),
                      shared_group=env("MQTT_SHARED_GROUP", "app"),
                      max_concurrent_messages=env_int("MQTT_MAX_CONCURRENT", 100),
                      connect_timeout=env_float("MQTT_CONNECT_TIMEOUT", 5.0))
