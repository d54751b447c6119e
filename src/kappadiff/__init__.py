"""kappadiff: weak-lensing mass maps with a diffusion-model prior.

Reproduces Boruah et al. (2025), "High-resolution weak lensing mass mapping from DES-Y3
data using diffusion-based prior", as a library driven by a Snakemake pipeline.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kappadiff")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0+unknown"

__all__ = ["__version__"]
