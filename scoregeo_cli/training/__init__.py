"""Training of score backbones (``scoregeo train``): the rotated-digits UNet with its
snapshots and sample quality (``unet``), and the synthetic manifolds' MLP (``mlp``). The
score fields they produce are read by ``scoregeo_cli.scores``."""
