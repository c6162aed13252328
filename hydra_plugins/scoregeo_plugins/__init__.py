"""scoregeo's Hydra sweeper and launcher (``hydra/sweeper=scoregeo``, ``hydra/launcher=scoregeo``),
the defaults of ``scoregeo run -m`` (conf/config.yaml); see ``scoregeo_sweeper``."""
