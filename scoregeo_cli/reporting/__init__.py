"""Reporting: a run's results and printed summary (``results``), paired statistics
(``stats``), a run's figures (``figures``); recipes (``recipes``), where their runs are
(``run_folders``), cells read from the runs (``aggregate``), the tables (``tables``) and the
recipes' figures (``recipe_figures``)."""
