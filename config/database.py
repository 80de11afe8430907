from core.config import DatabaseConfig, env, env_bool, env_float, env_int
from core.dialects import DIALECTS


def load() -> DatabaseConfig:
    driver = env("DB_CONNECTION", "sqlite")
    default_db = "storage/database.sqlite" if driver == "sqlite" else "app"
    dialect = DIALECTS.get(driver)
    default_port = dialect.default_port if dialect is not None and dialect.default_port else 3306
    return DatabaseConfig(driver=driver, database=env("DB_DATABASE", default_db),
                          host=env("DB_HOST", "127.0.0.1"), port=env_int("DB_PORT", default_port),
                          username=env("DB_USERNAME", "root"), password=env("DB_PASSWORD"),
                          timeout=max(0.0, env_float("DB_TIMEOUT", 30.0)),
                          listen_url=env("DB_LISTEN_URL"), wake=env_bool("DB_WAKE", True))
