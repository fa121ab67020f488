"""pods: a self-hosted server for the AgentMail Pods API."""

# The one place the version is written: pyproject.toml reads it from here. Bumped
# with every change users can see; CHANGELOG.md's top entry names it.
__version__ = "0.8.2"

from .api import close_app, create_app  # noqa: E402  (flaskr's place for the factory)

__all__ = ["__version__", "close_app", "create_app"]
