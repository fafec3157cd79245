"""Clients that compute only what survives: the physically smaller model of a unit mask.

A unit that is off (pruned by the FedSparse server, switched off by FedL1's threshold, dropped
from a FedDrop client's sub-model) contributes exactly nothing, and neither does any weight that
reads it.  Training the dense model with those units masked still spends a whole convolution on
each of them.  :class:`Subnet` is the smaller model that keeps only the surviving units:

* every gated layer's weight rows and per-unit extras (bias, BatchNorm scale, shift and running
  statistics) cut to the kept units;
* the layer that reads them (the next conv or fc layer, a ResNet block's conv2) cut to the kept
  input columns;
* an output layer keeps all its rows: removing a class would change the softmax, so its gates
  (FedDrop's dropped classes) still act by masking.

Its state vector is cut from the full one (:meth:`Subnet.values`) and the trained values are
written back (:meth:`Subnet.merge`), so messages and the server keep the full group_map.

Why the results are the same (``tests/test_slicing.py``): in the masked dense model an off unit's
output is exactly 0, so the gradient on the weights that read it is 0 (their input is 0), and
the gradient on its own group is 0 as well. Either its gate is 0 (FedDrop), or its weights are 0
and the ReLU's derivative at 0 is 0 (FedSparse, FedL1). SGD leaves those values where they were,
and the smaller model leaves them out.  The updates agree up to float round-off: a convolution
over fewer channels sums in another order.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from emfl.nn.groups import GateHooks, GroupMap
from emfl.nn.state import load_state_vector, state_tensors, state_vector

__all__ = ["Subnet", "Subnets", "held_units", "WIDTH_STEP"]

# Each cut layer keeps a multiple of WIDTH_STEP units (and at least that many): some off units are
# put back, which compute 0 in either model.  On the CPU a LeNet-5 forward and backward on 16 and
# 56 channels took 0.58 of the full widths' time, on 14 and 52 channels 0.61 (CIFAR-10 shapes;
# 0.66 and 0.65 on FEMNIST's: benchmarks/sliced_speed.py).
WIDTH_STEP = 8

_WIDTH = {nn.Conv2d: ("out_channels", "in_channels"), nn.Linear: ("out_features", "in_features")}


def held_units(group_map: GroupMap, keep: torch.Tensor) -> torch.Tensor:
    """Which units the smaller model of the mask ``keep`` holds (boolean, one per unit): the units
    on, and in each cut layer the first few off units that make the count a multiple of
    :data:`WIDTH_STEP` (at least one step, at most the layer); every unit of an output layer."""
    keep = keep.detach().cpu() > 0
    if keep.shape != (group_map.num_groups,):
        raise ValueError(f"a unit mask for this model has shape ({group_map.num_groups},); got {tuple(keep.shape)}")
    held = keep.clone()
    for layer, (a, b) in zip(group_map.layers, group_map.layer_slices):
        m = held[a:b]  # a view: filled in place
        if layer.reader is None:
            m[:] = True  # the output layer: masked, not cut
            continue
        n = int(m.sum())
        short = min(b - a, max(WIDTH_STEP, -(-n // WIDTH_STEP) * WIDTH_STEP)) - n
        m[torch.nonzero(~m).flatten()[:short]] = True
    return held


class Subnet:
    """The model ``model`` cut to the units ``keep`` (one entry per unit of ``group_map``, 0: off).

    ``model``: the smaller ``nn.Module`` (its own parameters; forward hooks of the full model are
    not carried over); ``group_map``: its :class:`GroupMap`, unit ``k`` of which is unit ``units[k]``
    of the full model; ``hooks``: :class:`GateHooks` on it; ``d``: the length of its state
    vector (:meth:`values` cuts it from the full one, :meth:`merge` writes it back).  It holds the units of :func:`held_units`: a few off
    units besides those on (they compute 0 in either model), so that every width is a multiple of
    :data:`WIDTH_STEP` and none is 0."""

    def __init__(self, model: nn.Module, group_map: GroupMap, keep: torch.Tensor):
        held = held_units(group_map, keep)
        device = state_tensors(model)[0].device
        kept = [torch.nonzero(held[a:b]).flatten().to(device) for a, b in group_map.layer_slices]
        self.units = torch.cat([a + idx for (a, _), idx in zip(group_map.layer_slices, kept)])
        # per state tensor: (its slice of the state vector, its view as rows x input units x values
        # per input, the rows kept or None, the input units kept or None)
        self._cuts, placeholders, offset = [], {}, 0
        for t, (own, reader) in zip(state_tensors(model), group_map.roles):
            G = group_map.layers[reader].groups if reader is not None else 1
            rows = kept[own] if own is not None else None
            cols = kept[reader] if reader is not None else None
            shape = list(t.shape)
            if rows is not None:
                shape[0] = len(rows)
            if cols is not None:
                shape[1] = t.shape[1] * len(cols) // G
            self._cuts.append((offset, t.numel(), (t.shape[0], G, -1), rows, cols))
            offset += t.numel()
            # laid out as the full model's (channels-last convolutions), strides and all
            if list(t.shape) == shape:
                new = torch.empty_like(t)
            elif t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
                new = torch.empty(shape, dtype=t.dtype, device=t.device, memory_format=torch.channels_last)
            else:
                new = torch.empty(shape, dtype=t.dtype, device=t.device)
            placeholders[id(t)] = nn.Parameter(new, requires_grad=t.requires_grad) if isinstance(
                t, nn.Parameter) else new
        if offset != group_map.d:
            raise ValueError("the group map was built for another model")
        # the same modules with tensors of the smaller shapes (filled by load): no copy of the values
        self.model = sub = copy.deepcopy(model, memo=dict(placeholders))
        for mod in sub.modules():  # the full model's gates act on the full model only
            mod._forward_hooks.clear()
            mod._forward_pre_hooks.clear()
            for kind, (out_attr, in_attr) in _WIDTH.items():
                if isinstance(mod, kind):
                    setattr(mod, out_attr, mod.weight.shape[0])
                    setattr(mod, in_attr, mod.weight.shape[1] * getattr(mod, "groups", 1))
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.num_features = mod.weight.shape[0]
        self.d = sum(t.numel() for t in state_tensors(sub))
        self.group_map = GroupMap(sub, prune_output=any(l.reader is None for l in group_map.layers), ungated=group_map.ungated)
        if self.group_map.num_groups != len(self.units):
            raise ValueError("the smaller model's units do not match the mask")  # pragma: no cover
        self.hooks = GateHooks(self.group_map)

    def _pieces(self, w: torch.Tensor):
        for offset, n, view, rows, cols in self._cuts:
            yield w[offset:offset + n].view(view), rows, cols

    def values(self, w: torch.Tensor) -> torch.Tensor:
        """The smaller model's state vector, cut from the full one ``w``."""
        parts = []
        for piece, rows, cols in self._pieces(w):
            if rows is not None:
                piece = piece.index_select(0, rows)
            if cols is not None:
                piece = piece.index_select(1, cols)
            parts.append(piece.reshape(-1))
        return torch.cat(parts)

    def load(self, w: torch.Tensor) -> None:
        """Set the smaller model to the kept part of the full state vector ``w``."""
        load_state_vector(self.model, self.values(w))

    def merge(self, w: torch.Tensor, values: torch.Tensor | None = None) -> torch.Tensor:
        """``w`` with the smaller model's values (``values``, default its current state) written
        back where they came from: the values it left out keep their ``w``."""
        values = state_vector(self.model) if values is None else values
        out, i = w.clone(), 0
        for piece, rows, cols in self._pieces(out):
            k_rows = piece.shape[0] if rows is None else len(rows)
            k_cols = piece.shape[1] if cols is None else len(cols)
            n = k_rows * k_cols * piece.shape[2]
            part = values[i:i + n].view(k_rows, k_cols, -1)
            i += n
            if rows is None and cols is None:
                piece.copy_(part)
            elif cols is None:
                piece.index_copy_(0, rows, part)
            elif rows is None:
                piece.index_copy_(1, cols, part)
            else:
                piece[rows.view(-1, 1), cols.view(1, -1)] = part
        return out


class Subnets:
    """The :class:`Subnet` of a unit mask, built once for as long as the mask stays the same (a
    FedSparse or FedL1 round sends one mask to all its clients).  Returns None for a mask that
    keeps every unit that could be cut: the full model is then the smaller one."""

    def __init__(self, model: nn.Module, group_map: GroupMap):
        self.model, self.group_map = model, group_map
        self._last = (None, None)

    def __call__(self, keep: torch.Tensor):
        keep = keep.detach().cpu() > 0
        if bool(held_units(self.group_map, keep).all()):
            return None
        key, sub = self._last
        if key is None or not torch.equal(key, keep):
            sub = Subnet(self.model, self.group_map, keep)
            self._last = (keep, sub)
        return sub

    @property
    def current(self):
        """The :class:`Subnet` built for the last mask that cut something (None before any)."""
        return self._last[1]
