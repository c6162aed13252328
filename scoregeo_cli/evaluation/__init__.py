"""Evaluation metrics: image metrics (``images``) and path metrics over frames (``path``).

Submodules load torch, torchmetrics and the pretrained networks; import them directly:
``from scoregeo_cli.evaluation.images import lpips_distance``.
"""
