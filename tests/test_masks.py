"""Layer selection by name, mask buffers and mask arithmetic, against independent computations."""

import copy
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from sparse_lightning.budgets import UniformBudget
from sparse_lightning.errors import ConfigError
from sparse_lightning.masks import MaskSet, add_missing_mask_buffers, strip_masks
from sparse_lightning.pruning import global_masks, keep_top, kth_smallest, layerwise_masks
from sparse_lightning.selection import default_prunable_names, select_prunable


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.conv = nn.Conv1d(8, 16, 3)
        self.norm = nn.BatchNorm1d(16)
        self.fc = nn.Linear(16, 20)
        self.position = nn.Embedding(10, 8)
        self.position.weight.requires_grad_(False)


def test_default_selection_is_conv_linear_embedding_weights_never_biases_or_norms():
    assert default_prunable_names(Net()) == ["embed.weight", "conv.weight", "fc.weight"]


def test_a_tied_weight_is_selected_once():
    net = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10, bias=False))
    net[1].weight = net[0].weight
    assert default_prunable_names(net) == ["0.weight"]


def test_first_and_last_layer_dense_and_patterns():
    net = Net()
    assert select_prunable(net, first_layer_dense=True) == ["conv.weight", "fc.weight"]
    assert select_prunable(net, last_layer_dense=True) == ["embed.weight", "conv.weight"]
    assert select_prunable(net, exclude=["embed.*"]) == ["conv.weight", "fc.weight"]
    assert select_prunable(net, include=["*.bias"]) == ["conv.bias", "norm.bias", "fc.bias"]


@pytest.mark.parametrize(
    "kwargs, bad",
    [(dict(include=["nothing.*"]), "nothing.*"), (dict(exclude=["norm.*"]), "norm.*")],
)
def test_a_pattern_matching_nothing_is_an_error_naming_it(kwargs, bad):
    with pytest.raises(ConfigError, match=bad.replace("*", r"\*")):
        select_prunable(Net(), **kwargs)


def test_per_layer_overrides_and_their_errors():
    shapes = {"embed.weight": (4, 2), "conv.weight": (3, 2, 2), "fc.weight": (2, 3)}
    assert UniformBudget({"conv.*": 0.5}).targets(shapes, 0.9) == {
        "embed.weight": 0.9,
        "conv.weight": 0.5,
        "fc.weight": 0.9,
    }
    assert UniformBudget({"conv.*": 0.5}).pooled(list(shapes)) == ["embed.weight", "fc.weight"]
    with pytest.raises(ConfigError, match="missing"):
        UniformBudget({"missing": 0.5}).targets(shapes, 0.9)
    with pytest.raises(ConfigError, match="1.5"):
        UniformBudget({"conv.*": 1.5}).targets(shapes, 0.9)


def test_keep_top_keeps_exactly_the_largest_entries_like_a_full_sort():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(37, 11, generator=g)
    for n_keep in [0, 1, 200, 406, 407]:
        keep = keep_top(scores, n_keep)
        order = np.argsort(-scores.numpy().ravel(), kind="stable")
        expected = np.zeros(scores.numel(), dtype=bool)
        expected[order[:n_keep]] = True
        assert keep.sum() == n_keep
        assert np.array_equal(keep.numpy().ravel(), expected)


@pytest.mark.parametrize("fraction", [0.001, 0.3, 0.5, 0.9, 0.999])
def test_sampled_selection_equals_kthvalue_on_large_tensors(fraction):
    g = torch.Generator().manual_seed(1)
    flat = torch.randn(300_000, generator=g).abs()
    flat[:50_000] = float("-inf")  # pruned entries
    flat[100_000:120_000] = 0.5  # a block of ties
    k = max(1, int(fraction * flat.numel()))
    assert kth_smallest(flat, k) == flat.kthvalue(k).values
    keep = keep_top(flat, flat.numel() - k)
    assert int(keep.sum()) == min(flat.numel() - k, 250_000)  # never a pruned (-inf) entry
    assert not keep[:50_000].any()


def test_keep_top_is_exact_when_scores_tie():
    scores = torch.tensor([0.0, 1.0, 1.0, 1.0, 2.0])
    assert keep_top(scores, 3).tolist() == [False, True, True, False, True]


def test_masks_only_shrink_and_pruned_entries_stay_pruned():
    w = torch.arange(1.0, 11.0)
    old = torch.ones(10, dtype=torch.bool)
    old[9] = False  # the largest weight was pruned earlier: it must not come back
    (new,) = layerwise_masks([w.abs()], [old], [0.5])
    assert new.sum() == 5 and not new[9]
    assert bool((new <= old).all())
    assert new.tolist() == [False] * 4 + [True] * 5 + [False]


def test_global_scope_ranks_all_weights_together():
    a, b = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([10.0, 20.0])
    masks = [torch.ones(4, dtype=torch.bool), torch.ones(2, dtype=torch.bool)]
    new_a, new_b = global_masks([a, b], masks, 0.5)
    assert new_a.tolist() == [False, False, False, True] and new_b.tolist() == [True, True]


def test_mask_set_buffers_are_persistent_and_zero_the_weights():
    net = Net()
    masks = MaskSet(net, ["conv.weight", "fc.weight"])
    keep = torch.rand_like(net.conv.weight) > 0.5
    masks.set_masks({"conv.weight": keep})
    assert bool((net.conv.weight[~keep] == 0).all())
    assert "conv.weight_mask" in net.state_dict()
    assert masks.layer_sparsity()["conv.weight"] == pytest.approx(1 - keep.float().mean().item())
    assert masks.layer_sparsity()["fc.weight"] == 0.0
    total = net.conv.weight.numel() + net.fc.weight.numel()
    assert masks.sparsity() == pytest.approx((~keep).sum().item() / total)


def test_masked_models_deepcopy_pickle_and_reload_into_a_fresh_model():
    net = Net()
    MaskSet(net, ["conv.weight"]).set_masks({"conv.weight": torch.rand(16, 8, 3) > 0.5})
    for clone in (copy.deepcopy(net), pickle.loads(pickle.dumps(net))):
        assert torch.equal(clone.conv.weight_mask, net.conv.weight_mask)
        assert torch.equal(clone.conv.weight, net.conv.weight)
    fresh = Net()
    add_missing_mask_buffers(fresh, net.state_dict())
    fresh.load_state_dict(net.state_dict())
    assert torch.equal(fresh.conv.weight_mask, net.conv.weight_mask)
    plain = Net()
    plain.load_state_dict(strip_masks(net.state_dict()))  # strict: no mask keys left
