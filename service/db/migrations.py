"""The schema's migrations: Alembic's configuration, the newest revision, ``migrate``."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory

from alembic import command


def _project_root() -> Path:
    """Where alembic.ini lives: beside the package in a checkout or editable
    install, else the working directory (commands run from the repository root)."""
    beside_package = Path(__file__).resolve().parents[2]
    if (beside_package / "alembic.ini").exists():
        return beside_package
    return Path.cwd()


def alembic_config(database_url: str | None = None) -> Config:
    root = _project_root()
    config = Config(str(root / "alembic.ini"))
    config.set_main_option("script_location", str(root / "alembic"))
    if database_url is not None:
        # '%' must be doubled for configparser interpolation.
        config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def alembic_head() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def migrate(database_url: str) -> None:
    """Bring the schema to the newest revision (``python -m service migrate``)."""
    config = alembic_config(database_url)
    config.attributes["configure_logging"] = False
    command.upgrade(config, "head")
