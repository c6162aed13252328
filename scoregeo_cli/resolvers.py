"""OmegaConf resolvers the config tree names run folders with (``${dirname:...}`` in
conf/config.yaml), registered when this module is imported: by ``scoregeo run`` and by
the recipes that find run folders the same way."""

from __future__ import annotations

import hashlib

from omegaconf import OmegaConf


def run_dirname(overrides: str) -> str:
    """The folder name of a run from Hydra's override_dirname.

    Empty (no overrides) becomes "default". A value with a path separator cannot name a
    folder as it is: slashes become underscores and a hash of the exact overrides is
    appended, so ``a=/x/col/a_b`` and ``a=/x/col_a/b`` get different folders. A name over
    180 characters keeps its first 160 and a hash of the whole, so it stays unique and
    within file-system limits.
    """
    name = overrides or "default"
    digest = hashlib.sha1(overrides.encode()).hexdigest()
    if "/" in name:
        name = f"{name.replace('/', '_')}-{digest[:8]}"
    if len(name) > 180:
        name = f"{name[:160]}-{digest[:12]}"
    return name


if not OmegaConf.has_resolver("dirname"):
    OmegaConf.register_new_resolver("dirname", run_dirname)
