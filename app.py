"""Entry point: ``python app.py --help``."""

from pods.cli import cli

if __name__ == "__main__":
    cli(prog_name="app.py")
