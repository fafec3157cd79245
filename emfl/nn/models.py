"""The models: the EM paper's LeNet-5, the classic LeNet-5, and ResNet-20.

The paper's "LeNet-5" is pinned down by its FedAvg communication totals (Tables 1 and 3):
conv 5x5, 32 -> max-pool 2 -> conv 5x5, 64 -> max-pool 2 -> fc 512 -> fc classes, ReLU, no
padding.  That is 878,538 parameters on CIFAR-10 (3x32x32, 10 classes) and 608,702 on FEMNIST
(1x28x28, 62 classes); sent down and up by 10 clients for 1,000 (6,000) rounds at 4 bytes a value
it gives the tables' 65 (272) GiB.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from emfl.nn.groups import Layer

__all__ = ["LeNet5", "LeNet5Classic", "ResNet20", "TanhMLP", "make_model", "MODELS", "num_parameters", "layer_macs"]


def _flat_size(input_shape, features: nn.Module) -> int:
    with torch.no_grad():
        return int(features(torch.zeros(1, *input_shape)).numel())


class LeNet5(nn.Module):
    """The EM paper's LeNet-5: conv 32 -> pool -> conv 64 -> pool -> fc 512 -> fc classes."""

    chain = True  # each conv / linear layer reads only the one before (emfl.nn.groups)

    def __init__(self, input_shape=(3, 32, 32), num_classes: int = 10):
        super().__init__()
        c = input_shape[0]
        self.conv1 = nn.Conv2d(c, 32, 5)
        self.conv2 = nn.Conv2d(32, 64, 5)
        flat = _flat_size(input_shape, nn.Sequential(self.conv1, nn.MaxPool2d(2), self.conv2, nn.MaxPool2d(2)))
        self.fc1 = nn.Linear(flat, 512)
        self.fc2 = nn.Linear(512, num_classes)

    def forward(self, x):
        # max-pool before the ReLU: the same values and gradients as ReLU then pool (a ReLU is
        # monotone, so it commutes with a max), at a quarter of the ReLU's work
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


class LeNet5Classic(nn.Module):
    """LeCun et al.'s LeNet-5 shape: conv 6 -> pool -> conv 16 -> pool -> fc 120 -> fc 84 -> fc."""

    chain = True

    def __init__(self, input_shape=(3, 32, 32), num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(input_shape[0], 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        flat = _flat_size(input_shape, nn.Sequential(self.conv1, nn.MaxPool2d(2), self.conv2, nn.MaxPool2d(2)))
        self.fc1 = nn.Linear(flat, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))  # pool, then ReLU: see LeNet5.forward
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc3(F.relu(self.fc2(x)))


class _Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.short is None else self.short(x)))


class ResNet20(nn.Module):
    """He et al.'s ResNet-20 for 32x32 images: 3 stages of 3 basic blocks, 16/32/64 channels.

    Gated units (:meth:`gated_units`): the inner channels of every block (conv1 -> BatchNorm ->
    gate -> ReLU -> conv2), 16 x 3 + 32 x 3 + 64 x 3 = 336 of them.  The gate sits after the
    BatchNorm, so a closed gate gives exactly 0 (before it, the BatchNorm would turn 0 into its
    shift).  The channels of the residual stream (the first conv, each block's conv2 and
    shortcut) are summed with a shortcut, so switching one of them off would not remove the
    channel: they stay dense, and so does the output layer."""

    def __init__(self, input_shape=(3, 32, 32), num_classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(input_shape[0], 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(3):
                layers.append(_Block(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, num_classes)

    def gated_units(self) -> list:
        """One :class:`emfl.nn.groups.Layer` per block: the units of its conv1, gated after bn1,
        each owning its conv1 filter and its bn1 scale, shift and running statistics; read by conv2."""
        out = []
        for i, blk in enumerate(self.layers):
            bn = blk.bn1
            out.append(Layer(f"layers.{i}.conv1", blk.conv1, bn, (bn.weight, bn.bias, bn.running_mean, bn.running_var),
                             blk.conv2))
        return out

    def forward(self, x):
        x = self.layers(F.relu(self.bn(self.conv(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class TanhMLP(nn.Module):
    """A fully connected tanh network, 12-10-7-5-4-3-2 on the 12-bit task (Shwartz-Ziv and
    Tishby's information-plane network): ``fc1 .. fc5`` with ``act1 .. act5`` (the layers' tanh
    outputs, the representations the information probes read), then ``out``."""

    chain = True
    widths = (10, 7, 5, 4, 3)

    def __init__(self, input_shape=(1, 1, 12), num_classes: int = 2):
        super().__init__()
        n = 1
        for k in input_shape:
            n *= k
        for i, w in enumerate(self.widths, 1):
            setattr(self, f"fc{i}", nn.Linear(n, w))
            setattr(self, f"act{i}", nn.Tanh())
            n = w
        self.out = nn.Linear(n, num_classes)

    def forward(self, x):
        x = torch.flatten(x, 1)
        for i in range(1, len(self.widths) + 1):
            x = getattr(self, f"act{i}")(getattr(self, f"fc{i}")(x))
        return self.out(x)


MODELS = {"lenet5": LeNet5, "lenet5-classic": LeNet5Classic, "resnet20": ResNet20, "mlp-tanh": TanhMLP}


def make_model(name: str, input_shape, num_classes: int) -> nn.Module:
    """A model by name (one of ``MODELS``) for the given input shape and class count."""
    try:
        cls = MODELS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}") from None
    return cls(tuple(input_shape), num_classes)


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def layer_macs(model: nn.Module, input_shape) -> list:
    """Multiply-adds of one example's forward pass through each conv and linear layer, in the order
    of ``model.modules()``: the layer's weight count times the positions it is applied at (a conv
    layer's output height x width, a linear layer's 1).  A weight switched off saves its share."""
    macs, hooks = {}, []
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for m in layers:
        def count(mod, inp, out):
            positions = out[0, 0].numel() if isinstance(mod, nn.Conv2d) else 1
            macs[id(mod)] = mod.weight.numel() * positions
        hooks.append(m.register_forward_hook(count))
    was_training = model.training
    try:
        model.eval()
        p = next(model.parameters())
        model(torch.zeros(1, *input_shape, dtype=p.dtype, device=p.device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return [macs[id(m)] for m in layers]
