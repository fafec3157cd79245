"""Structured groups of a model: one unit per conv output filter and per fc output neuron.

FedSparse (and the FedL1 and FedDrop baselines) switch whole units on and off.  A unit owns the
weights that produce its output (one row of the layer's weight), its bias, and, when a BatchNorm
follows the layer, its BatchNorm scale, shift and running statistics: its *group*.  Once a unit is
off, its output is exactly zero, so every weight of the next layer that *reads* it (a column of a
linear layer; an input channel of a conv, for a conv -> fc boundary every spatial position of the
channel) is dead as well: it changes nothing the model computes, and need not be sent or stored.
That is the structural count the paper's "send only the subset of the model that has survived"
asks for (:meth:`GroupMap.alive`).

Where a unit is gated depends on the model: the output of its layer in a chain of conv and linear
layers (the LeNets), the output of the BatchNorm after it in ResNet-20 (after the BatchNorm, so
that a gate of 0 gives 0, not the BatchNorm's shift).  A model says where its gates go with a
``gated_units()`` method (ResNet-20) or by being a chain (``chain = True``, or an
``nn.Sequential`` of conv, linear, pooling and activation layers); FedSparse refuses any other
model rather than gate units that cannot be pruned.  The output layer is left dense by default
(pruning it would remove classes).

:class:`GroupMap` places the units in the flat state vector (:func:`emfl.nn.state.state_vector`):
group norms, masks spread over the vector, what a mask keeps alive, and the gated parameters
(:meth:`GroupMap.gated_parameters`: the gates applied to the parameters rather than to the
activations, the same model for less work).  :class:`GateHooks` multiplies each gated layer's
outputs by its gates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from emfl.nn.state import state_tensors

__all__ = ["Layer", "prunable_layers", "group_norms", "group_sizes", "apply_group_masks", "dense_values",
           "GroupMap", "GateHooks"]

_CHAIN_PARTS = (nn.Conv2d, nn.Linear, nn.ReLU, nn.Tanh, nn.Sigmoid, nn.MaxPool2d, nn.AvgPool2d, nn.Flatten,
                nn.Dropout)


@dataclass(frozen=True, eq=False)
class Layer:
    """A layer of gated units.

    ``module``: the Conv2d or Linear whose weight rows are the units' own weights; ``gate``: the
    module whose output channels the gates multiply (``module`` itself, or the BatchNorm right
    after it); ``extras``: the other per-unit tensors of the group (bias, BatchNorm scale, shift and
    running statistics; entry ``j`` belongs to unit ``j``); ``reader``: the Conv2d or Linear whose
    inputs are these units (None for the output layer), its weight read as (out, units, span)."""

    name: str
    module: nn.Module
    gate: nn.Module
    extras: tuple = ()
    reader: nn.Module | None = None

    @property
    def groups(self) -> int:
        return self.module.weight.shape[0]

    @property
    def values_per_group(self) -> int:
        """Values of one group: a row of the weight (all inputs x kernel) plus one entry of each extra."""
        return self.module.weight[0].numel() + len(self.extras)

    @property
    def values_read(self) -> int:
        """Weights of the reader that read one unit (0 without a reader)."""
        return 0 if self.reader is None else self.reader.weight.numel() // self.groups


def _chain_layers(model: nn.Module) -> list:
    """The conv and linear layers of a chain model, each read by the next."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    out = []
    for k, (name, m) in enumerate(layers):
        reader = layers[k + 1][1] if k + 1 < len(layers) else None
        if reader is not None and reader.weight.shape[1] % m.weight.shape[0]:
            raise ValueError(f"{name} has {m.weight.shape[0]} outputs but the next layer reads "
                             f"{reader.weight.shape[1]} inputs: the model is not a chain of layers")
        extras = () if m.bias is None else (m.bias,)
        out.append(Layer(name, m, m, extras, reader))
    return out


def _is_chain(model: nn.Module) -> bool:
    if getattr(model, "chain", False):
        return True
    return isinstance(model, nn.Sequential) and all(isinstance(m, _CHAIN_PARTS) for m in model)


def prunable_layers(model: nn.Module, prune_output: bool = False) -> list:
    """The layers whose units are gated, in forward order: the model's own ``gated_units()``, or
    every conv and linear layer of a chain model (the output layer only if ``prune_output``)."""
    if hasattr(model, "gated_units"):
        if prune_output:
            raise ValueError(f"{type(model).__name__} cannot gate its output layer")
        layers = list(model.gated_units())
    elif _is_chain(model):
        layers = _chain_layers(model)
        if not layers:
            raise ValueError("the model has no Conv2d or Linear layer to gate")
        if not prune_output and layers[-1].reader is None and isinstance(layers[-1].module, nn.Linear):
            layers = layers[:-1]
    else:
        if not any(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules()):
            raise ValueError("the model has no Conv2d or Linear layer to gate")
        raise ValueError(
            f"cannot place gates in {type(model).__name__}: a gate must switch a unit's output to exactly "
            "zero, which needs to know what follows each layer (a BatchNorm, a shortcut). Give the model a "
            "gated_units() method (see emfl.nn.models.ResNet20) or set chain = True if its conv and linear "
            "layers each read only the previous one")
    if not layers:
        raise ValueError("the model has no Conv2d or Linear layer to gate")
    return layers


def group_norms(layer: Layer) -> torch.Tensor:
    """``||w_g||_2`` of each group's weight row (bias and BatchNorm values excluded), shape (groups,)."""
    w = layer.module.weight
    return w.reshape(w.shape[0], -1).norm(dim=1)


def group_sizes(layers: list) -> torch.Tensor:
    """Values per group for every group of ``layers``, concatenated in layer order."""
    return torch.cat([torch.full((l.groups,), l.values_per_group, dtype=torch.int64) for l in layers])


@torch.no_grad()
def apply_group_masks(layers: list, masks: list) -> None:
    """Zero every value of each group whose mask entry is 0 (in place)."""
    if len(masks) != len(layers):
        raise ValueError(f"need one mask per layer ({len(layers)}); got {len(masks)}")
    for layer, m in zip(layers, masks):
        if m.shape != (layer.groups,):
            raise ValueError(f"mask for {layer.name} must have shape ({layer.groups},); got {tuple(m.shape)}")
        w = layer.module.weight
        w.mul_(m.view(-1, *([1] * (w.dim() - 1))).to(w.dtype))
        for t in layer.extras:
            t.mul_(m.to(t.dtype))


def dense_values(model: nn.Module, layers: list) -> int:
    """Parameters outside the gated groups."""
    gated = sum(l.groups * l.values_per_group for l in layers)
    return sum(p.numel() for p in model.parameters()) - gated


class GroupMap:
    """Positions of every gated unit in the flat state vector of ``model`` (laid out as
    :func:`emfl.nn.state.state_vector` does: parameters, then float buffers).

    ``group_of``: the unit of every value.  A value is alive under a unit mask when neither its own unit nor the unit it reads is off (:meth:`alive`)."""

    def __init__(self, model: nn.Module, prune_output: bool = False, ungated: tuple = ()):
        layers = prunable_layers(model, prune_output)
        names = [l.name for l in layers]
        unknown = [n for n in ungated if n not in names]
        if unknown:
            raise ValueError(f"no gated layer named {', '.join(unknown)}: the layers with gates are {', '.join(names)}")
        self.ungated = tuple(ungated)  # layers left without gates: never pruned, all their values dense
        self.layers = [l for l in layers if l.name not in self.ungated]
        if not self.layers:
            raise ValueError("every gated layer is ungated: leave at least one layer with gates")
        offsets, i = {}, 0
        for t in state_tensors(model):
            offsets[id(t)] = i
            i += t.numel()
        self.d = i
        sizes, first = [], 0
        self.layer_slices = []
        self._places = []  # per layer: (first unit, units, offset of the weight, values per row, offsets of the extras)
        for layer in self.layers:
            m, G = layer.module, layer.groups
            for t in layer.extras:
                if t.shape != (G,):
                    raise ValueError(f"{layer.name}: an extra tensor of a unit must have shape ({G},)")
            self._places.append((first, G, offsets[id(m.weight)], m.weight[0].numel(),
                                 [offsets[id(t)] for t in layer.extras]))
            sizes.append(torch.full((G,), layer.values_per_group, dtype=torch.int64))
            self.layer_slices.append((first, first + G))
            first += G
        self.sizes = torch.cat(sizes)
        self.num_groups = first
        self._rows = [(offsets[id(l.module.weight)], l.groups, l.module.weight[0].numel()) for l in self.layers]
        # the state vector as segments, one per tensor: (length, own layer, reader-of layer, view), so
        # that masks spread by broadcasting instead of gathers
        own_of = {id(l.module.weight): k for k, l in enumerate(self.layers)}
        own_of.update({id(t): k for k, l in enumerate(self.layers) for t in l.extras})
        reads = {id(l.reader.weight): k for k, l in enumerate(self.layers) if l.reader is not None}
        self._segments = []
        for t in state_tensors(model):
            own, reader = own_of.get(id(t)), reads.get(id(t))
            if reader is not None:
                view = (t.shape[0], self.layers[reader].groups, -1)
            elif own is not None:
                view = (t.shape[0], 1, -1)
            else:
                view = None
            self._segments.append((t.numel(), own, reader, view))
        # per state tensor: (the layer whose units own its rows, the layer whose units its columns read)
        self.roles = [(own, reader) for _, own, reader, _ in self._segments]
        self.dense = self.d - int(self.sizes.sum())  # values in no group (they may still read a unit)
        self._group_of = None
        # the affine parameters of every gate module (a conv or linear layer: its weight and bias; a
        # BatchNorm: its scale and shift), by name, for gated_parameters
        names = {id(p): n for n, p in model.named_parameters()}
        self._gate_params = [[(names[id(p)], p) for p in (l.gate.weight, getattr(l.gate, "bias", None))
                              if p is not None and id(p) in names] for l in self.layers]

    @property
    def group_of(self) -> torch.Tensor:
        """``group_of[i]``: the unit whose group holds value ``i`` of the state vector (-1: none);
        built on first use."""
        if self._group_of is None:
            group_of = torch.full((self.d,), -1, dtype=torch.int64)
            for first, G, w0, per, extras in self._places:
                group_of[w0:w0 + G * per] = torch.arange(first, first + G).repeat_interleave(per)
                for e0 in extras:
                    group_of[e0:e0 + G] = torch.arange(first, first + G)
            self._group_of = group_of
        return self._group_of

    def _row_sums(self, v: torch.Tensor) -> torch.Tensor:
        """Per unit, the sum of ``v`` over its weight row."""
        return torch.cat([v[a:a + G * per].view(G, per).sum(1) for a, G, per in self._rows])

    def norms(self, w: torch.Tensor, unsent_sq: torch.Tensor | None = None) -> torch.Tensor:
        """``||w_g||_2`` of every group's weight row, shape (groups,); ``unsent_sq`` adds the
        squares of the row's values a message left out (:meth:`unsent_sq`)."""
        sq = self._row_sums(w * w)
        return (sq if unsent_sq is None else sq + unsent_sq).sqrt()

    def unsent_sq(self, w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per unit, the sum of squares of its weight-row values that read an off unit of ``mask``:
        dead, so not sent, but part of ``||w_g||``.  With it the receiver gets the exact norms
        (``norms(received, unsent_sq)``); it is one value per surviving unit."""
        dead = 1 - self.alive(mask.to(w.dtype))
        return self._row_sums(w * w * dead) * mask.to(w.dtype)

    def _spread(self, mask: torch.Tensor, readers: bool) -> torch.Tensor:
        per_layer = [mask[a:b] for a, b in self.layer_slices]
        ones = mask.new_ones(max(n for n, *_ in self._segments))
        parts = []
        for n, own, reader, view in self._segments:
            reader = reader if readers else None
            if own is None and reader is None:
                parts.append(ones[:n])
                continue
            f = ones[:n].view(view)
            if own is not None:
                f = f * per_layer[own].view(-1, 1, 1)
            if reader is not None:
                f = f * per_layer[reader].view(1, -1, 1)
            parts.append(f.reshape(-1))
        return torch.cat(parts)

    def expand(self, mask: torch.Tensor) -> torch.Tensor:
        """A per-unit mask spread over each unit's own group; values in no group get 1."""
        return self._spread(mask, readers=False)

    def alive(self, mask: torch.Tensor) -> torch.Tensor:
        """The structural mask (same dtype as ``mask``): 1 for a value that still matters when the
        units with ``mask == 0`` are off, 0 for the off units' own groups and every weight that
        reads an off unit."""
        return self._spread(mask, readers=True)

    def own_off(self, mask: torch.Tensor) -> torch.Tensor:
        """Boolean: the values of the own groups of the units with ``mask == 0``."""
        return self.expand(mask) == 0

    def values_on(self, mask: torch.Tensor) -> int:
        """Values alive under ``mask`` (structural count: off units remove their readers too)."""
        return int(self.alive(mask).sum())

    def values_own(self, mask: torch.Tensor) -> int:
        """Values left when the off units remove only their own groups (the readers stay)."""
        return self.dense + int((self.sizes.to(mask.device) * (mask > 0)).sum())

    def sparsity(self, keep: torch.Tensor) -> dict:
        """The record's sparsities of a model whose units ``keep`` survive: ``sparsity``, the
        share of values pruned structurally (own groups and their readers); ``sparsity_own``, the
        share in the pruned units' own groups only; ``alive_units``, the surviving units of each
        layer by name (where pruning happens: e.g. ``{"conv1": 14, "conv2": 61, "fc1": 418}``)."""
        alive = {layer.name: int((keep[a:b] > 0).sum()) for layer, (a, b) in zip(self.layers, self.layer_slices)}
        return {"sparsity": 1 - self.values_on(keep) / self.d, "sparsity_own": 1 - self.values_own(keep) / self.d,
                "alive_units": alive}

    def submodel_values(self, units: torch.Tensor) -> int:
        """Parameters of the sub-model that keeps the units ``units``: the values alive under it."""
        return self.values_on(units)

    def gated_parameters(self, z: torch.Tensor, layers=None) -> dict:
        """``{name: z_g * p_g}`` for the affine parameters of the gate modules of ``layers`` (indices;
        default all): with them in place of the model's own (``torch.func.functional_call``) the
        model computes what :class:`GateHooks` with gates ``z`` computes on those layers.  A gate
        multiplies its unit's output ``a = W_g x + b_g`` (or the BatchNorm's ``gamma_g xhat +
        beta_g``), and ``z a = (z W_g) x + z b_g``.  Differentiable in ``z`` and in the parameters
        (their gradients are ``z`` times the gated ones)."""
        out = {}
        for k in range(len(self.layers)) if layers is None else layers:
            a, b = self.layer_slices[k]
            for name, p in self._gate_params[k]:
                out[name] = p * z[a:b].view(-1, *([1] * (p.dim() - 1)))
        return out


class GateHooks:
    """Multiplies the output channels of each layer's ``gate`` module by gates ``z`` (None: no gating).

    :meth:`forward` runs the model under gates for training, with each gate where it costs least:
    a conv layer's (or BatchNorm's) on its parameters, since its output (batch x units x height x
    width) is far larger than its filters; a linear layer's on its output (batch x units), smaller
    than its weight (units x inputs) whenever the batch is smaller than the layer's input."""

    def __init__(self, group_map: GroupMap):
        self.map = group_map
        self.z = None
        self._skip = ()
        self.on_parameters = tuple(k for k, l in enumerate(group_map.layers) if not isinstance(l.gate, nn.Linear))
        self._handles = [layer.gate.register_forward_hook(self._hook(k)) for k, layer in enumerate(group_map.layers)]

    def _hook(self, k):
        def hook(module, inputs, output):
            if self.z is None or k in self._skip:
                return output
            a, b = self.map.layer_slices[k]
            z = self.z[a:b]
            return output * (z.view(1, -1, 1, 1) if output.dim() == 4 else z.view(1, -1))

        return hook

    def forward(self, model: nn.Module, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``model(x)`` with every unit's output scaled by its gate ``z_g`` (differentiable in
        ``z``): the same as setting ``self.z = z`` and calling the model, for less work."""
        from torch.func import functional_call

        self.z, self._skip = z, self.on_parameters
        try:
            return functional_call(model, self.map.gated_parameters(z, self.on_parameters), (x,))
        finally:
            self.z, self._skip = None, ()

    def remove(self):
        for h in self._handles:
            h.remove()
