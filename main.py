"""Entry point: `python main.py COMMAND [ARGS]`."""
from core.console import cli

if __name__ == "__main__":
    cli(prog_name="python main.py")
