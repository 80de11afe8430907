from core.config import DatabaseConfig, env, env_float, env_int


def load() -> DatabaseConfig:
    driver = env("DB_CONNECTION", "sqlite")
    default_db = "storage/database.sqlite" if driver == "sqlite" else "app"
    return DatabaseConfig(driver=driver, database=env("DB_DATABASE", default_db),
                          host=env("DB_HOST", "127.0.0.1"), port=env_int("DB_PORT", 3306),
                          username=env("DB_USERNAME", "root"), password=env("DB_PASSWORD"),
                          timeout=max(0.0, env_float("DB_TIMEOUT", 30.0)))
