"""The framework package: jobs, queue connections, the worker, MQTT routing and the console."""
