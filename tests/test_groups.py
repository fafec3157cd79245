"""Structured groups: one per conv filter and fc neuron, sizes by hand, masking."""

import pytest
import torch

from emfl.nn import groups
from emfl.nn.models import make_model


def test_lenet5_groups_by_hand():
    model = make_model("lenet5", (3, 32, 32), 10)
    layers = groups.prunable_layers(model)
    assert [l.name for l in layers] == ["conv1", "conv2", "fc1"]  # the output layer stays dense
    assert [l.groups for l in layers] == [32, 64, 512]
    # conv1: 3*5*5 + 1; conv2: 32*5*5 + 1; fc1: 1600 + 1
    assert [l.values_per_group for l in layers] == [76, 801, 1601]
    assert groups.dense_values(model, layers) == 512 * 10 + 10  # only fc2
    sizes = groups.group_sizes(layers)
    assert sizes.shape == (608,) and int(sizes.sum()) + 5130 == 878_538
    assert len(groups.prunable_layers(model, prune_output=True)) == 4


def test_group_norms_and_masks():
    model = make_model("lenet5-classic", (1, 28, 28), 62)
    layers = groups.prunable_layers(model)
    conv1 = layers[0]
    with torch.no_grad():
        conv1.module.weight.fill_(0.5)  # each filter has 25 weights of 0.5: norm sqrt(25 * 0.25) = 2.5
    assert torch.allclose(groups.group_norms(conv1), torch.full((6,), 2.5))
    masks = [torch.ones(l.groups) for l in layers]
    masks[0][[1, 4]] = 0
    groups.apply_group_masks(layers, masks)
    assert groups.group_norms(conv1).tolist() == [2.5, 0.0, 2.5, 2.5, 0.0, 2.5]
    assert conv1.module.bias[1] == 0 and conv1.module.bias[4] == 0
    with pytest.raises(ValueError, match="one mask per layer"):
        groups.apply_group_masks(layers, masks[:1])
    with pytest.raises(ValueError, match="must have shape"):
        groups.apply_group_masks(layers, [torch.ones(3)] + masks[1:])
    with pytest.raises(ValueError, match="no Conv2d or Linear"):
        groups.prunable_layers(torch.nn.ReLU())
