"""Results on disk (``results``), recipes (``recipes``), tables (``tables``) and figures (``figures``)."""
