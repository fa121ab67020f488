"""``python -m pods``: the same command line as the ``pods`` command and ``python app.py``."""

from .cli import cli

if __name__ == "__main__":
    cli()
