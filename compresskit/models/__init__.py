"""VGG-family networks and small baseline CNNs for 32×32 inputs, rebuilt from a JSON-able spec.

Every model is a `ConvNet`: ``features`` (a `nn.Sequential` of conv blocks — each itself
``Sequential(Conv2d 3×3 pad 1, [BatchNorm2d], ReLU, [SqueezeExcite])`` — and 2×2 max-pools)
followed by ``head``. A `ModelSpec` lists every conv layer's output channels, so pruned networks
with arbitrary per-layer widths rebuild exactly from the spec alone, with no pickled code.

The attention CNNs (``cnn_se``, ``cnn_se_bn``) are the ``cnn_deep`` plan with a squeeze-and-excitation
gate (`SqueezeExcite`) closing every conv block; its bottleneck width follows from the block's
width and ``ModelSpec.se_reduction`` (`se_width`), so it needs no entry of its own in the spec.

The model owns its structure: `ConvNet.named_blocks` lists its conv blocks (``block1…``), max-pools
(``pool1…``) and head linear layers (``fc1…``) in forward order, with their module paths; capture,
pruning, low-rank factorization, depth reduction and layer-wise training all walk that list.

The code is split by concept: `spec` (`ModelSpec`, `make_spec`, the named plans), `blocks` (conv
blocks, the SE gate, factorized layers) and `convnet` (`ConvNet`, `Block`, `build_model`). Import
every name from `compresskit.models`, which re-exports them all.
"""

from compresskit.models.blocks import (
    FACTORIZED,
    SE_MIN_WIDTH,
    FactorizedConv2d,
    FactorizedLinear,
    SqueezeExcite,
    conv_block,
    linear_layer,
    se_width,
)
from compresskit.models.convnet import (
    BLOCK_KINDS,
    INITS,
    Block,
    ConvNet,
    build_model,
    check_init,
    count_parameters,
    init_weights,
)
from compresskit.models.spec import (
    HEADS,
    MODEL_NAMES,
    POOL,
    SE_MODELS,
    SE_REDUCTION,
    VGG_LAYERS,
    ModelSpec,
    conv_sides,
    make_spec,
)

# Re-exported so a checkpoint can name it as "compresskit.models:torchvision_model" (a trusted module).
from compresskit.zoo import torchvision_model

__all__ = [
    "BLOCK_KINDS",
    "FACTORIZED",
    "HEADS",
    "INITS",
    "MODEL_NAMES",
    "POOL",
    "SE_MIN_WIDTH",
    "SE_MODELS",
    "SE_REDUCTION",
    "VGG_LAYERS",
    "Block",
    "ConvNet",
    "FactorizedConv2d",
    "FactorizedLinear",
    "ModelSpec",
    "SqueezeExcite",
    "build_model",
    "check_init",
    "conv_block",
    "conv_sides",
    "count_parameters",
    "init_weights",
    "linear_layer",
    "make_spec",
    "se_width",
    "torchvision_model",
]
