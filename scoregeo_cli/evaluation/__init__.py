"""Evaluation: image metrics (``images``: LPIPS, PSNR, SSIM, FID, KID), path metrics over
frames (``path``), geometry against the truth (``geometry``), what an image run measures
besides its frames (``image_runs``), the metrics row (``rows``) and the ``scoregeo lpips``
and ``scoregeo fid`` commands (``commands``).

Submodules load torch, torchmetrics and the pretrained networks; import them directly:
``from scoregeo_cli.evaluation.images import lpips_distance``.
"""
