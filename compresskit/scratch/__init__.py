"""CNN building blocks written from scratch in NumPy, for learning and for verifying the maths.

Each layer is a `*_forward(x, params...) -> (out, cache)` / `*_backward(dout, cache) -> grads` pair;
the tests check every backward against centred-difference gradients and every forward against
`torch.nn.functional`. It is written to be read and checked, not for speed: the naive conv and pool are
plain loops, and even the fast (sliding-window) versions are far slower than torch.
"""

from compresskit.scratch.conv import (
    conv_backward_fast,
    conv_backward_naive,
    conv_forward_fast,
    conv_forward_naive,
    conv_output_size,
    max_pool_backward_fast,
    max_pool_backward_naive,
    max_pool_forward_fast,
    max_pool_forward_naive,
)
from compresskit.scratch.gradcheck import numerical_gradient, numerical_gradient_array, rel_error
from compresskit.scratch.init import kaiming_normal
from compresskit.scratch.layers import (
    affine_backward,
    affine_forward,
    batchnorm_backward,
    batchnorm_forward,
    dropout_backward,
    dropout_forward,
    relu_backward,
    relu_forward,
    softmax_loss,
    spatial_batchnorm_backward,
    spatial_batchnorm_forward,
)
from compresskit.scratch.net import ThreeLayerConvNet
from compresskit.scratch.sandwich import (
    affine_relu_backward,
    affine_relu_forward,
    conv_relu_backward,
    conv_relu_forward,
    conv_relu_pool_backward,
    conv_relu_pool_forward,
)
from compresskit.scratch.solver import History, accuracy, adam, sgd_momentum, train

__all__ = [
    "History",
    "ThreeLayerConvNet",
    "accuracy",
    "adam",
    "affine_backward",
    "affine_forward",
    "affine_relu_backward",
    "affine_relu_forward",
    "batchnorm_backward",
    "batchnorm_forward",
    "conv_backward_fast",
    "conv_backward_naive",
    "conv_forward_fast",
    "conv_forward_naive",
    "conv_output_size",
    "conv_relu_backward",
    "conv_relu_forward",
    "conv_relu_pool_backward",
    "conv_relu_pool_forward",
    "dropout_backward",
    "dropout_forward",
    "kaiming_normal",
    "max_pool_backward_fast",
    "max_pool_backward_naive",
    "max_pool_forward_fast",
    "max_pool_forward_naive",
    "numerical_gradient",
    "numerical_gradient_array",
    "rel_error",
    "relu_backward",
    "relu_forward",
    "sgd_momentum",
    "softmax_loss",
    "spatial_batchnorm_backward",
    "spatial_batchnorm_forward",
    "train",
]
