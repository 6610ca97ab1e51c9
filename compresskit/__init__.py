"""compresskit: train VGG-family CNNs on small image sets, analyze them per layer, and shrink them."""

from compresskit.errors import CompresskitError

__all__ = ["CompresskitError"]
__version__ = "0.1.0"
