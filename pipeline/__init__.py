"""biomine pipeline: PubMed ingestion, task stages on Ray, Parquet outputs and the ``biomine`` CLI."""

from __future__ import annotations


def package_version() -> str:
    """biomine's version: the installed distribution's (``importlib.metadata``), else the one in the
    checkout's ``pyproject.toml`` (running from a source tree that was never installed), else ``"unknown"``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("biomine")
    except PackageNotFoundError:
        pass
    import tomllib
    from pathlib import Path

    try:
        with open(Path(__file__).resolve().parent.parent / "pyproject.toml", "rb") as f:
            project = tomllib.load(f).get("project", {})
    except (OSError, tomllib.TOMLDecodeError):
        return "unknown"
    return str(project["version"]) if project.get("name") == "biomine" and "version" in project else "unknown"
