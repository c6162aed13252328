"""Where the config tree (conf/) and the recipes (experiments/) are.

In a source checkout (or an editable install) they are the folders at the top of the
repository; a wheel installs the same files inside the package (pyproject.toml maps them to
``scoregeo_cli/conf`` and ``scoregeo_cli/experiments``).
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def _find(name: str) -> Path:
    for candidate in (PACKAGE / name, PACKAGE.parent / name):
        if (candidate / ("config.yaml" if name == "conf" else "README.md")).is_file():
            return candidate
    raise FileNotFoundError(f"scoregeo's {name}/ folder is missing from {PACKAGE} and {PACKAGE.parent}; "
                            "reinstall the package")


CONF_DIR = _find("conf")
RECIPES_DIR = _find("experiments")
