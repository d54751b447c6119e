"""The diffusion prior: backbone (:mod:`.unet`), process (:mod:`.process`), sampler
(:mod:`.sampler`), training (:mod:`.train`, :mod:`.data`) and checkpoints (:mod:`.checkpoint`).
"""
