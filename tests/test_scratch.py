"""compresskit.scratch: backward passes against centred differences, forwards against torch.nn.functional,
naive against fast conv/pool, and the classic training sanity checks on scikit-learn's 8x8 digits.

Gradient tolerances (norm-wise relative error, float64, h = 1e-6): < 1e-7 for smooth layers (affine,
conv, batch norm, softmax loss, dropout with a fixed mask); < 1e-5 where a ReLU or max-pool kink could be
crossed by the perturbation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from compresskit.scratch import (
    ThreeLayerConvNet,
    accuracy,
    adam,
    affine_backward,
    affine_forward,
    batchnorm_backward,
    batchnorm_forward,
    conv_backward_fast,
    conv_backward_naive,
    conv_forward_fast,
    conv_forward_naive,
    conv_relu_pool_backward,
    conv_relu_pool_forward,
    dropout_backward,
    dropout_forward,
    kaiming_normal,
    max_pool_backward_fast,
    max_pool_backward_naive,
    max_pool_forward_fast,
    max_pool_forward_naive,
    numerical_gradient,
    numerical_gradient_array,
    rel_error,
    relu_backward,
    relu_forward,
    sgd_momentum,
    softmax_loss,
    spatial_batchnorm_backward,
    spatial_batchnorm_forward,
    train,
)

SMOOTH = 1e-7
KINKED = 1e-5


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


# ---------------------------------------------------------------- gradcheck helper itself


def test_numerical_gradient_of_a_known_function_and_rel_error():
    """d/dx sum(x^3) = 3x^2; rel_error is 0 for equal arrays and 1 for opposite ones."""
    x = rng().normal(size=(3, 4))
    num = numerical_gradient(lambda: float(np.sum(x**3)), x)
    assert rel_error(num, 3 * x**2) < SMOOTH
    assert rel_error(x, x) == 0.0
    assert rel_error(x, -x) == pytest.approx(1.0)


# ---------------------------------------------------------------- affine, relu, loss


def test_affine_forward_matches_torch_linear_and_backward_gradcheck():
    """Affine is smooth: tolerance 1e-7."""
    r = rng(1)
    x, w, b = r.normal(size=(4, 2, 3)), r.normal(size=(6, 5)), r.normal(size=5)
    out, cache = affine_forward(x, w, b)
    np.testing.assert_allclose(out, F.linear(t(x).reshape(4, -1), t(w.T), t(b)).numpy(), rtol=1e-12)
    dout = r.normal(size=out.shape)
    dx, dw, db = affine_backward(dout, cache)
    assert dx.shape == x.shape
    assert rel_error(dx, numerical_gradient_array(lambda: affine_forward(x, w, b)[0], x, dout)) < SMOOTH
    assert rel_error(dw, numerical_gradient_array(lambda: affine_forward(x, w, b)[0], w, dout)) < SMOOTH
    assert rel_error(db, numerical_gradient_array(lambda: affine_forward(x, w, b)[0], b, dout)) < SMOOTH


def test_relu_forward_matches_torch_and_backward_gradcheck():
    """ReLU has a kink at 0: tolerance 1e-5."""
    r = rng(2)
    x = r.normal(size=(5, 7))
    out, cache = relu_forward(x)
    np.testing.assert_array_equal(out, F.relu(t(x)).numpy())
    dout = r.normal(size=x.shape)
    dx = relu_backward(dout, cache)
    assert rel_error(dx, numerical_gradient_array(lambda: relu_forward(x)[0], x, dout)) < KINKED
    assert np.all(dx[x < 0] == 0)


def test_softmax_loss_matches_torch_cross_entropy_and_gradcheck():
    """Softmax cross-entropy is smooth: tolerance 1e-7. Large logits must not overflow."""
    r = rng(3)
    scores, y = r.normal(size=(6, 4)), r.integers(0, 4, size=6)
    loss, dscores = softmax_loss(scores, y)
    assert loss == pytest.approx(F.cross_entropy(t(scores), t(y)).item(), rel=1e-12)
    assert rel_error(dscores, numerical_gradient(lambda: softmax_loss(scores, y)[0], scores)) < SMOOTH
    big = scores * 1000
    assert softmax_loss(big, y)[0] == pytest.approx(F.cross_entropy(t(big), t(y)).item(), rel=1e-10)


# ---------------------------------------------------------------- dropout


def test_dropout_is_inverted_seeded_and_identity_at_test():
    """Train mode zeroes about p of the units and scales survivors by 1/(1-p), so the mean is kept;
    the same seed gives the same mask; test mode is the identity (and so is its backward)."""
    x = rng(4).normal(loc=1.0, size=(200, 100))
    out, _ = dropout_forward(x, 0.3, "train", seed=7)
    kept = out != 0
    assert abs(1 - kept.mean() - 0.3) < 0.01
    np.testing.assert_allclose(out[kept], x[kept] / 0.7)
    assert abs(out.mean() - x.mean()) < 0.02
    np.testing.assert_array_equal(out, dropout_forward(x, 0.3, "train", seed=7)[0])
    assert not np.array_equal(out, dropout_forward(x, 0.3, "train", seed=8)[0])
    test_out, cache = dropout_forward(x, 0.3, "test")
    np.testing.assert_array_equal(test_out, x)
    np.testing.assert_array_equal(dropout_backward(x, cache), x)
    with pytest.raises(ValueError):
        dropout_forward(x, 1.0, "train")


def test_dropout_backward_gradcheck():
    """With a fixed seed dropout is linear in x: tolerance 1e-7."""
    r = rng(5)
    x, dout = r.normal(size=(4, 6)), r.normal(size=(4, 6))
    _, cache = dropout_forward(x, 0.5, "train", seed=3)
    num = numerical_gradient_array(lambda: dropout_forward(x, 0.5, "train", seed=3)[0], x, dout)
    assert rel_error(dropout_backward(dout, cache), num) < SMOOTH


# ---------------------------------------------------------------- batch norm


def test_batchnorm_train_forward_and_running_stats_match_torch():
    """Output and the momentum-updated running mean/var (unbiased var, as torch) after two batches."""
    r = rng(6)
    gamma, beta = r.normal(size=5), r.normal(size=5)
    param = {"mode": "train", "momentum": 0.2}
    rm, rv = torch.zeros(5, dtype=torch.float64), torch.ones(5, dtype=torch.float64)
    for _ in range(2):
        x = r.normal(loc=3.0, scale=2.0, size=(8, 5))
        out, _ = batchnorm_forward(x, gamma, beta, param)
        ref = F.batch_norm(t(x), rm, rv, t(gamma), t(beta), training=True, momentum=0.2, eps=1e-5)
        np.testing.assert_allclose(out, ref.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(param["running_mean"], rm.numpy(), rtol=1e-12)
    np.testing.assert_allclose(param["running_var"], rv.numpy(), rtol=1e-12)


def test_batchnorm_test_mode_uses_running_stats():
    """Test mode normalises with the running statistics: equal to torch's eval result, and different from
    the batch-statistics (train-mode) output on the same input."""
    r = rng(7)
    gamma, beta = r.normal(size=4), r.normal(size=4)
    mean, var = r.normal(size=4), r.uniform(0.5, 2.0, size=4)
    x = r.normal(loc=2.0, size=(6, 4))
    test_param = {"mode": "test", "running_mean": mean.copy(), "running_var": var.copy()}
    out, _ = batchnorm_forward(x, gamma, beta, test_param)
    ref = F.batch_norm(t(x), t(mean.copy()), t(var.copy()), t(gamma), t(beta), training=False, eps=1e-5)
    np.testing.assert_allclose(out, ref.numpy(), rtol=1e-12, atol=1e-12)
    train_out, _ = batchnorm_forward(x, gamma, beta, {"mode": "train"})
    assert np.max(np.abs(out - train_out)) > 0.1
    np.testing.assert_array_equal(test_param["running_mean"], mean)  # test mode leaves them alone


def test_spatial_batchnorm_forward_matches_torch_train_and_eval():
    r = rng(8)
    x = r.normal(loc=1.0, size=(3, 4, 5, 5))
    gamma, beta = r.normal(size=4), r.normal(size=4)
    param = {"mode": "train"}
    rm, rv = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    out, _ = spatial_batchnorm_forward(x, gamma, beta, param)
    ref = F.batch_norm(t(x), rm, rv, t(gamma), t(beta), training=True, momentum=0.1, eps=1e-5)
    np.testing.assert_allclose(out, ref.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(param["running_var"], rv.numpy(), rtol=1e-12)
    param["mode"] = "test"
    out, _ = spatial_batchnorm_forward(x, gamma, beta, param)
    ref = F.batch_norm(t(x), rm, rv, t(gamma), t(beta), training=False, eps=1e-5)
    np.testing.assert_allclose(out, ref.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", ["train", "test"])
def test_batchnorm_backward_gradcheck(mode):
    """Batch norm is smooth: tolerance 1e-7 for dx, dgamma, dbeta, in both modes."""
    r = rng(9)
    x, gamma, beta = r.normal(size=(5, 3)), r.normal(size=3), r.normal(size=3)
    dout = r.normal(size=x.shape)

    def f():
        p = {"mode": mode, "running_mean": np.full(3, 0.3), "running_var": np.full(3, 1.7)}
        return batchnorm_forward(x, gamma, beta, p)[0]

    p = {"mode": mode, "running_mean": np.full(3, 0.3), "running_var": np.full(3, 1.7)}
    _, cache = batchnorm_forward(x, gamma, beta, p)
    dx, dgamma, dbeta = batchnorm_backward(dout, cache)
    assert rel_error(dx, numerical_gradient_array(f, x, dout)) < SMOOTH
    assert rel_error(dgamma, numerical_gradient_array(f, gamma, dout)) < SMOOTH
    assert rel_error(dbeta, numerical_gradient_array(f, beta, dout)) < SMOOTH


def test_spatial_batchnorm_backward_gradcheck():
    """Smooth: tolerance 1e-7."""
    r = rng(10)
    x, gamma, beta = r.normal(size=(2, 3, 3, 3)), r.normal(size=3), r.normal(size=3)
    dout = r.normal(size=x.shape)

    def f():
        return spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"})[0]

    dx, dgamma, dbeta = spatial_batchnorm_backward(dout, spatial_batchnorm_forward(x, gamma, beta,
                                                                                   {"mode": "train"})[1])
    assert rel_error(dx, numerical_gradient_array(f, x, dout)) < SMOOTH
    assert rel_error(dgamma, numerical_gradient_array(f, gamma, dout)) < SMOOTH
    assert rel_error(dbeta, numerical_gradient_array(f, beta, dout)) < SMOOTH


# ---------------------------------------------------------------- convolution

# (x shape, w shape, stride, pad): 'same' padding, stride 2 with padding, even kernel without padding.
CONV_CASES = [
    ((2, 3, 5, 5), (4, 3, 3, 3), 1, 1),
    ((2, 2, 7, 7), (3, 2, 3, 3), 2, 1),
    ((1, 2, 6, 6), (2, 2, 2, 2), 2, 0),
]


@pytest.mark.parametrize(("xs", "ws", "stride", "pad"), CONV_CASES)
def test_conv_forward_naive_and_fast_match_torch_conv2d(xs, ws, stride, pad):
    r = rng(11)
    x, w, b = r.normal(size=xs), r.normal(size=ws), r.normal(size=ws[0])
    ref = F.conv2d(t(x), t(w), t(b), stride=stride, padding=pad).numpy()
    naive, _ = conv_forward_naive(x, w, b, stride, pad)
    fast, _ = conv_forward_fast(x, w, b, stride, pad)
    np.testing.assert_allclose(naive, ref, rtol=1e-10, atol=1e-12)
    assert rel_error(naive, fast) < 1e-10


@pytest.mark.parametrize(("xs", "ws", "stride", "pad"), CONV_CASES)
def test_conv_backward_naive_gradcheck_and_fast_equal(xs, ws, stride, pad):
    """Conv is linear in x, w, b: tolerance 1e-7. Fast backward equals naive to 1e-10 and torch autograd."""
    r = rng(12)
    x, w, b = r.normal(size=xs), r.normal(size=ws), r.normal(size=ws[0])
    out, cache = conv_forward_naive(x, w, b, stride, pad)
    dout = r.normal(size=out.shape)
    grads = conv_backward_naive(dout, cache)

    def f():
        return conv_forward_naive(x, w, b, stride, pad)[0]

    for g, arg in zip(grads, (x, w, b), strict=True):
        assert rel_error(g, numerical_gradient_array(f, arg, dout)) < SMOOTH
    fast = conv_backward_fast(dout, conv_forward_fast(x, w, b, stride, pad)[1])
    for g_naive, g_fast in zip(grads, fast, strict=True):
        assert rel_error(g_naive, g_fast) < 1e-10
    tx, tw, tb = (t(a.copy()).requires_grad_() for a in (x, w, b))
    F.conv2d(tx, tw, tb, stride=stride, padding=pad).backward(t(dout))
    for g_fast, ref in zip(fast, (tx.grad, tw.grad, tb.grad), strict=True):
        assert rel_error(g_fast, ref.numpy()) < 1e-12


def test_conv_rejects_a_kernel_that_does_not_tile_the_input():
    x, w, b = np.zeros((1, 1, 6, 6)), np.zeros((1, 1, 3, 3)), np.zeros(1)
    for forward in (conv_forward_naive, conv_forward_fast):
        with pytest.raises(ValueError, match="does not tile"):
            forward(x, w, b, 2, 0)


# ---------------------------------------------------------------- max-pool

POOL_CASES = [((2, 3, 4, 4), 2, 2, 2), ((1, 2, 7, 7), 3, 3, 2), ((2, 2, 6, 4), 3, 2, 1)]


@pytest.mark.parametrize(("xs", "ph", "pw", "stride"), POOL_CASES)
def test_max_pool_naive_and_fast_match_torch_and_each_other(xs, ph, pw, stride):
    """Includes overlapping windows (stride < window), where gradients from two windows add up."""
    r = rng(13)
    x = r.normal(size=xs)
    naive, cache_n = max_pool_forward_naive(x, ph, pw, stride)
    fast, cache_f = max_pool_forward_fast(x, ph, pw, stride)
    np.testing.assert_array_equal(naive, F.max_pool2d(t(x), (ph, pw), stride).numpy())
    np.testing.assert_array_equal(naive, fast)
    dout = r.normal(size=naive.shape)
    dx_naive = max_pool_backward_naive(dout, cache_n)
    assert rel_error(dx_naive, max_pool_backward_fast(dout, cache_f)) < 1e-10
    tx = t(x.copy()).requires_grad_()
    F.max_pool2d(tx, (ph, pw), stride).backward(t(dout))
    assert rel_error(dx_naive, tx.grad.numpy()) < 1e-12


@pytest.mark.parametrize(("xs", "ph", "pw", "stride"), POOL_CASES)
def test_max_pool_backward_naive_gradcheck(xs, ph, pw, stride):
    """Max-pool has kinks where two window entries tie: tolerance 1e-5."""
    r = rng(14)
    x = r.normal(size=xs)
    out, cache = max_pool_forward_naive(x, ph, pw, stride)
    dout = r.normal(size=out.shape)
    num = numerical_gradient_array(lambda: max_pool_forward_naive(x, ph, pw, stride)[0], x, dout)
    assert rel_error(max_pool_backward_naive(dout, cache), num) < KINKED


def test_max_pool_ties_route_the_gradient_once_in_both_versions():
    """A constant window sends its gradient to one element (the first), not to every tied maximum."""
    x = np.ones((1, 1, 2, 2))
    dout = np.full((1, 1, 1, 1), 3.0)
    for fwd, bwd in ((max_pool_forward_naive, max_pool_backward_naive),
                     (max_pool_forward_fast, max_pool_backward_fast)):
        dx = bwd(dout, fwd(x)[1])
        np.testing.assert_array_equal(dx, [[[[3.0, 0.0], [0.0, 0.0]]]])


# ---------------------------------------------------------------- sandwiches, init, net


def test_conv_relu_pool_sandwich_gradcheck():
    """Composed of ReLU and max-pool kinks: tolerance 1e-5."""
    r = rng(15)
    x, w, b = r.normal(size=(2, 2, 4, 4)), r.normal(size=(3, 2, 3, 3)), r.normal(size=3)
    out, cache = conv_relu_pool_forward(x, w, b, 1, 1)
    assert out.shape == (2, 3, 2, 2)
    dout = r.normal(size=out.shape)

    def f():
        return conv_relu_pool_forward(x, w, b, 1, 1)[0]

    for g, arg in zip(conv_relu_pool_backward(dout, cache), (x, w, b), strict=True):
        assert rel_error(g, numerical_gradient_array(f, arg, dout)) < KINKED


def test_kaiming_normal_std_is_gain_over_sqrt_fan_in():
    w = kaiming_normal((400, 3, 3, 3), 27, rng(16))
    assert w.std() == pytest.approx(math.sqrt(2 / 27), rel=0.02)
    assert abs(w.mean()) < 0.01
    assert kaiming_normal((20000,), 50, rng(16), gain=1.0).std() == pytest.approx(math.sqrt(1 / 50), rel=0.02)


def test_three_layer_net_shapes_reg_and_full_gradcheck():
    """Whole-network gradient (ReLU and pool kinks): tolerance 1e-5, with L2 regularisation on."""
    dims = {"input_dim": (2, 4, 4), "num_filters": 3, "hidden_dim": 5, "num_classes": 4, "seed": 1}
    model = ThreeLayerConvNet(**dims, reg=0.3)
    p = model.params
    assert p["W1"].shape == (3, 2, 3, 3) and p["W2"].shape == (12, 5) and p["W3"].shape == (5, 4)
    assert np.all(p["b2"] == 0)
    r = rng(17)
    X, y = r.normal(size=(3, 2, 4, 4)), r.integers(0, 4, size=3)
    assert model.loss(X).shape == (3, 4)
    loss, grads = model.loss(X, y)
    data_loss = ThreeLayerConvNet(**dims).loss(X, y)[0]
    penalty = 0.15 * sum(float(np.sum(p[k] ** 2)) for k in ("W1", "W2", "W3"))
    assert loss == pytest.approx(data_loss + penalty, rel=1e-12)
    for name, value in p.items():
        num = numerical_gradient(lambda: model.loss(X, y)[0], value)
        assert rel_error(grads[name], num) < KINKED, name


# ---------------------------------------------------------------- solver


def test_sgd_momentum_and_adam_match_torch_optim():
    r = rng(18)
    w0, grads = r.normal(size=(3, 4)), [r.normal(size=(3, 4)) for _ in range(4)]
    """Four steps of each rule give torch's parameters (torch's SGD writes momentum as v = mu v + g,
    w -= lr v, equivalent for a constant lr)."""
    for ours, make, lr in ((sgd_momentum, lambda q: torch.optim.SGD(q, lr=0.1, momentum=0.9), 0.1),
                           (adam, lambda q: torch.optim.Adam(q, lr=0.01), 0.01)):
        w, state = w0.copy(), {}
        tw = torch.nn.Parameter(t(w0.copy()))
        opt = make([tw])
        for g in grads:
            w = ours(w, g, state, lr)
            tw.grad = t(g.copy())
            opt.step()
        np.testing.assert_allclose(w, tw.detach().numpy(), rtol=1e-12, atol=1e-14)


@pytest.fixture(scope="module")
def digits():
    """sklearn digits as (N, 1, 8, 8) float64 in [0, 1], stratified 80/20 split, seeded."""
    d = load_digits()
    X = (d.images / 16.0)[:, None].astype(np.float64)
    return train_test_split(X, d.target, test_size=0.2, stratify=d.target, random_state=0)


def test_initial_loss_with_small_weights_is_ln_classes(digits):
    X_train, _, y_train, _ = digits
    model = ThreeLayerConvNet(weight_scale=1e-3, seed=0)
    loss, _ = model.loss(X_train[:100], y_train[:100])
    assert abs(loss - math.log(10)) < 0.1


def test_overfits_50_images(digits):
    X_train, _, y_train, _ = digits
    X, y = X_train[:50], y_train[:50]
    model = ThreeLayerConvNet(seed=0)
    history = train(model, X, y, X, y, update="adam", lr=5e-3, epochs=30, batch_size=10, seed=0)
    assert history.train_acc[-1] == 1.0
    assert history.loss[-1] < history.loss[0]


@pytest.mark.slow
def test_trains_to_90_percent_test_accuracy_on_digits_and_is_seeded(digits):
    X_train, X_test, y_train, y_test = digits
    runs = []
    for _ in range(2):
        model = ThreeLayerConvNet(num_filters=8, hidden_dim=64, seed=0)
        history = train(model, X_train, y_train, X_test, y_test, update="sgd_momentum", lr=0.05,
                        epochs=8, batch_size=50, seed=0, update_kwargs={"momentum": 0.9})
        runs.append(history)
    assert len(runs[0].val_acc) == 8
    assert runs[0] == runs[1]
    assert accuracy(model, X_test, y_test) == runs[0].val_acc[-1] >= 0.9
