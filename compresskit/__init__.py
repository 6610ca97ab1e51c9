"""compresskit: train VGG-family CNNs on small image sets, analyze them per layer, and shrink them."""

import logging

from compresskit.errors import CompresskitError

# torch-pruning imports torch.utils.cpp_extension, which logs a warning about CUDA_HOME on every
# machine without a CUDA toolkit; it says nothing about compresskit's own use of torch.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

__all__ = ["CompresskitError"]
__version__ = "0.1.0"
