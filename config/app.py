from core.config import AppConfig, env


def load() -> AppConfig:
    packages = tuple(p.strip() for p in env("JOB_PACKAGES", "app.jobs").split(",") if p.strip())
    return AppConfig(name=env("APP_NAME", "mqtt-app"), key=env("APP_KEY"),
                     log_file=env("LOG_FILE"), job_packages=packages,
                     listeners=env("APP_LISTENERS").strip())
