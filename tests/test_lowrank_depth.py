"""Low-rank factorization (SVD factors, ranks, full-rank equality, gradcheck, reload) and depth
reduction (the cut, the truncated model)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compresskit.checkpoint import load_checkpoint, save_checkpoint
from compresskit.compress.depth import choose_depth, truncate, truncated_spec
from compresskit.compress.lowrank import (
    LowRankConfig,
    factorize,
    factorize_conv,
    factorize_linear,
    factorize_matrix,
    rank_for_energy,
    rank_for_ratio,
)
from compresskit.compress.prune import PruneConfig, prune_copy
from compresskit.errors import CompresskitError
from compresskit.models import FactorizedConv2d, FactorizedLinear, ModelSpec, build_model, make_spec


def vgg(head: str = "linear"):
    spec = make_spec("vgg11_bn", 10, width=0.125, head=head)
    return build_model(spec, seed=0).eval(), spec


def test_factor_shapes_and_eckart_young_error():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(12, 30, generator=g, dtype=torch.float64)
    s = torch.linalg.svdvals(w)
    for rank in (1, 5, 12):
        reduce, expand, _ = factorize_matrix(w, rank)
        assert reduce.shape == (rank, 30)
        assert expand.shape == (12, rank)
        error = torch.linalg.matrix_norm(w - expand @ reduce)
        assert error.item() == pytest.approx(s[rank:].square().sum().sqrt().item(), abs=1e-9)


def test_rank_selection():
    s = torch.tensor([4.0, 2.0, 1.0, 1.0])  # squares 16, 4, 1, 1 → cumulative 16/22, 20/22, 21/22, 1
    assert rank_for_energy(s, 0.5) == 1
    assert rank_for_energy(s, 16 / 22) == 1
    assert rank_for_energy(s, 0.9) == 2
    assert rank_for_energy(s, 0.95) == 3
    assert rank_for_energy(s, 1.0) == 4
    assert rank_for_ratio(64, 0.5) == 32
    assert rank_for_ratio(10, 0.01) == 1
    assert rank_for_ratio(10, 1.0) == 10


def test_full_rank_factorization_reproduces_the_original():
    for head in ("linear", "mlp"):
        model, spec = vgg(head)
        full_rank = LowRankConfig(rank_ratio=1.0)
        factored, _, plans = factorize(model, spec, full_rank, only_if_cheaper=False)
        assert all(p.action == "factorized" for p in plans)
        assert sum(isinstance(m, FactorizedConv2d) for m in factored.modules()) == len(spec.conv_widths)
        assert sum(isinstance(m, FactorizedLinear) for m in factored.modules()) == (2 if head == "mlp" else 1)
        x = torch.randn(3, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(factored(x), model(x), rtol=1e-4, atol=1e-4)


def test_factorized_layers_pass_gradcheck():
    torch.manual_seed(0)
    conv = factorize_conv(nn.Conv2d(3, 5, 3, padding=1).double(), 2).double()
    linear = factorize_linear(nn.Linear(6, 4).double(), 2).double()
    assert torch.autograd.gradcheck(conv, (torch.randn(1, 3, 5, 5, dtype=torch.float64, requires_grad=True),))
    assert torch.autograd.gradcheck(linear, (torch.randn(2, 6, dtype=torch.float64, requires_grad=True),))


def test_plan_lists_every_layer_and_factorizes_only_where_macs_drop():
    model, spec = vgg()
    _, new_spec, plans = factorize(model, spec, LowRankConfig(rank_ratio=0.8))
    assert [p.layer for p in plans] == [f"block{i}" for i in range(1, 9)] + ["fc1"]
    actions = set()
    for plan in plans:
        dims = [int(d) for d in plan.shape.split("×")]
        out, n = dims[0], 1
        for d in dims[1:]:
            n *= d
        assert plan.full_rank == min(out, n)
        assert plan.rank == rank_for_ratio(plan.full_rank, 0.8)
        cheaper = plan.rank * (n + out) < out * n
        assert plan.action == ("factorized" if cheaper else "kept: no MAC saving")
        assert (plan.macs_after < plan.macs_before) == cheaper
        actions.add(plan.action)
    assert actions == {"factorized", "kept: no MAC saving"}  # the case is a real mix
    conv_plans = plans[:-1]
    assert new_spec.conv_ranks == [p.rank if p.action == "factorized" else None for p in conv_plans]


def test_selected_layers_only_and_unknown_names_refused():
    model, spec = vgg()
    _, new_spec, plans = factorize(model, spec, LowRankConfig(rank_ratio=0.25, layers="block5,block6"))
    assert [p.layer for p in plans if p.action == "factorized"] == ["block5", "block6"]
    assert new_spec.conv_ranks[:4] == [None] * 4
    with pytest.raises(CompresskitError, match="block9"):
        factorize(model, spec, LowRankConfig(rank_ratio=0.5, layers="block2,block9"))


@pytest.mark.parametrize(
    ("cfg", "fragment"),
    [
        (LowRankConfig(), "exactly one"),
        (LowRankConfig(rank_ratio=0.5, energy=0.9), "exactly one"),
        (LowRankConfig(rank_ratio=0.0), "^rank_ratio must .*got 0.0"),
        (LowRankConfig(energy=1.5), "^energy must .*got 1.5"),
    ],
)
def test_bad_lowrank_configuration(cfg, fragment):
    with pytest.raises(CompresskitError, match=fragment):
        cfg.validate()


def test_factorized_checkpoint_reloads_exactly(tmp_path):
    model, spec = vgg("mlp")
    factored, new_spec, _ = factorize(model, spec, LowRankConfig(energy=0.8))
    assert new_spec.conv_ranks is not None
    path = save_checkpoint(tmp_path / "f.pt", new_spec, factored)
    again = load_checkpoint(path)
    assert again.spec == new_spec
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again.build()(x), factored(x))


def test_spec_refuses_bad_ranks():
    with pytest.raises(CompresskitError, match="conv_ranks"):
        ModelSpec(name="x", layers=[4, "M"], conv_ranks=[2, 3]).validate()
    with pytest.raises(CompresskitError, match="positive"):
        ModelSpec(name="x", layers=[4, "M"], conv_ranks=[0]).validate()


def test_pruning_a_factorized_model_is_refused():
    model, spec = vgg()
    factored, new_spec, _ = factorize(model, spec, LowRankConfig(rank_ratio=0.25))
    with pytest.raises(CompresskitError, match="prune before factorizing"):
        prune_copy(factored, new_spec, PruneConfig())


def test_pruned_then_factorized_composes():
    model, spec = vgg()
    pruned, pruned_spec = prune_copy(model, spec, PruneConfig(ratio=0.5))
    factored, new_spec, plans = factorize(pruned, pruned_spec, LowRankConfig(rank_ratio=0.25))
    assert new_spec.conv_widths == pruned_spec.conv_widths
    assert any(p.action == "factorized" for p in plans)
    assert factored(torch.randn(1, 3, 32, 32)).shape == (1, 10)


# ----------------------------------------------------------------------------- depth


def test_depth_cut_at_the_last_block_that_still_gains():
    csi = [0.40, 0.55, 0.70, 0.72, 0.725, 0.80, 0.801, 0.80]
    keep, gains = choose_depth(csi, input_csi=0.30, min_gain=0.01)
    assert keep == 6  # block6 gains .075; blocks 7 and 8 gain ≤ .001
    assert gains == pytest.approx([0.10, 0.15, 0.15, 0.02, 0.005, 0.075, 0.001, -0.001])
    assert choose_depth(csi, 0.30, min_gain=0.1)[0] == 3
    assert choose_depth(csi, 0.30, keep_blocks=2)[0] == 2


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"min_gain": 0.5}, "would remove every block"),
        ({"keep_blocks": 0}, "^keep_blocks must .*got 0"),
        ({"keep_blocks": 9}, "^keep_blocks must .*got 9"),
    ],
)
def test_depth_refuses_removing_everything(kwargs, fragment):
    with pytest.raises(CompresskitError, match=fragment):
        choose_depth([0.4, 0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6], 0.3, **kwargs)


def test_truncated_spec_keeps_the_pools_after_the_last_block():
    spec = make_spec("vgg11_bn", 10, width=0.125)  # [8, M, 16, M, 32, 32, M, 64, 64, M, 64, 64, M]
    assert truncated_spec(spec, 1).layers == [8, "M"]
    assert truncated_spec(spec, 3).layers == [8, "M", 16, "M", 32]
    assert truncated_spec(spec, 4).layers == [8, "M", 16, "M", 32, 32, "M"]
    assert truncated_spec(spec, 8).layers == spec.layers


def test_truncate_keeps_block_weights_and_attaches_a_fresh_head():
    model, spec = vgg("mlp")
    short, short_spec = truncate(model, spec, 4)
    assert short_spec.conv_widths == spec.conv_widths[:4]
    assert short_spec.head == "mlp"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(short.features(x), model.features[:7](x))
    first_linear = next(m for m in short.head.modules() if isinstance(m, nn.Linear))
    assert first_linear.in_features == 32 * 4 * 4
    assert short(x).shape == (2, 10)


def test_truncate_keeps_factorized_block_weights():
    model, spec = vgg()
    cfg = LowRankConfig(rank_ratio=0.25, layers="block2,block3")
    factored, factored_spec, _ = factorize(model, spec, cfg)
    short, short_spec = truncate(factored, factored_spec, 3)
    assert short_spec.conv_ranks == factored_spec.conv_ranks[:3]
    assert isinstance(short.features[4][0], FactorizedConv2d)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(short.features(x), factored.features[:5](x), rtol=0, atol=0)
