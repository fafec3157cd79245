"""FedSparse's bookkeeping on the engine's flat state vector: which values belong to which gated
group, group norms, masks, gate hooks and what a sparse message costs in bytes.

A group (see :mod:`emfl.nn.groups`) is a conv output filter or an fc output neuron: its weight
row and its bias.  Norms use the weight row only.  Everything else in the state vector is dense.
"""

from __future__ import annotations

import math

import torch

from emfl.nn.groups import prunable_layers

__all__ = ["GroupMap", "GateHooks", "sparse_bytes"]


class GroupMap:
    """Positions of every gated group in the flat state vector of ``model`` (as
    :func:`emfl.nn.engine.state_vector` lays it out: parameters, then float buffers)."""

    def __init__(self, model, state_tensors, prune_output: bool = False):
        self.layers = prunable_layers(model, prune_output)
        offsets, i = {}, 0
        for t in state_tensors:
            offsets[id(t)] = i
            i += t.numel()
        d = i
        self.group_of = torch.full((d,), -1, dtype=torch.int64)
        self.weight_of = torch.full((d,), -1, dtype=torch.int64)
        sizes, first = [], 0
        self.layer_slices = []
        for layer in self.layers:
            m, G = layer.module, layer.groups
            w0 = offsets[id(m.weight)]
            per = m.weight[0].numel()
            idx = torch.arange(first, first + G).repeat_interleave(per)
            self.group_of[w0:w0 + G * per] = idx
            self.weight_of[w0:w0 + G * per] = idx
            if m.bias is not None:
                b0 = offsets[id(m.bias)]
                self.group_of[b0:b0 + G] = torch.arange(first, first + G)
            sizes.append(torch.full((G,), per + (m.bias is not None), dtype=torch.int64))
            self.layer_slices.append((first, first + G))
            first += G
        self.sizes = torch.cat(sizes)
        self.num_groups = first
        self.dense = int((self.group_of < 0).sum())
        self._wsel = self.weight_of >= 0
        self._gsel = self.group_of >= 0

    def norms(self, w: torch.Tensor) -> torch.Tensor:
        """``||w_g||_2`` of every group's weight row, shape (groups,)."""
        sq = torch.zeros(self.num_groups, dtype=w.dtype, device=w.device)
        sq.index_add_(0, self.weight_of[self._wsel].to(w.device), w[self._wsel.to(w.device)] ** 2)
        return sq.sqrt()

    def expand(self, mask: torch.Tensor) -> torch.Tensor:
        """A per-group mask spread over the state vector; dense values get 1."""
        full = torch.ones(self.group_of.shape, dtype=mask.dtype, device=mask.device)
        full[self._gsel.to(mask.device)] = mask[self.group_of[self._gsel].to(mask.device)]
        return full

    def values_on(self, mask: torch.Tensor) -> int:
        """Values sent when only the groups with ``mask == 1`` are sent (plus the dense values)."""
        return self.dense + int((self.sizes.to(mask.device) * (mask > 0)).sum())


class GateHooks:
    """Multiplies each gated layer's output channels by gates ``z`` (None: no gating)."""

    def __init__(self, group_map: GroupMap):
        self.map = group_map
        self.z = None
        self._handles = [layer.module.register_forward_hook(self._hook(k)) for k, layer in enumerate(group_map.layers)]

    def _hook(self, k):
        def hook(module, inputs, output):
            if self.z is None:
                return output
            a, b = self.map.layer_slices[k]
            z = self.z[a:b]
            return output * (z.view(1, -1, 1, 1) if output.dim() == 4 else z.view(1, -1))

        return hook

    def remove(self):
        for h in self._handles:
            h.remove()


def sparse_bytes(values: int, groups: int = 0, thresholds: int = 0) -> int:
    """Bytes of a message: 4 per float32 value and threshold, one bit per group mask entry."""
    return 4 * (values + thresholds) + math.ceil(groups / 8)
