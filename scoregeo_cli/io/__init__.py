"""Input and output below everything else: files written atomically with the run folder's
marker and lock (``files``), progress bars (``progress``), image files (``image_files``),
offline weights and data files (``weights``) and the content-addressed cache (``cache``)."""
