"""Entry point: `python main.py COMMAND [ARGS]`."""
from core.console import cli

if __name__ == "__main__":
    from core.worker.supervisor import follow_supervisor

    follow_supervisor()      # a worker a supervisor started: stop with it (SIGTERM when it dies)
    cli(prog_name="python main.py")
