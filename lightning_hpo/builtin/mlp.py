"""Networks. Plain ``nn.Module``s: the LightningModule wraps whichever one a config names."""

from __future__ import annotations

from torch import nn


class MLP(nn.Module):
    """A fully connected network with ``layers`` hidden layers of ``nodes`` units.

    Args:
        in_features, out_features: supplied by the trainer from the data.
        nodes: width of every hidden layer.
        layers: number of hidden layers.
        activation: name of a ``torch.nn`` activation class, e.g. ``GELU`` or ``ReLU``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        nodes: int = 64,
        layers: int = 4,
        activation: str = "GELU",
    ):
        super().__init__()
        if nodes < 1 or layers < 1:
            raise ValueError(f"nodes and layers must be >= 1, got nodes={nodes}, layers={layers}")
        act = getattr(nn, activation, None)
        if not (isinstance(act, type) and issubclass(act, nn.Module)):
            raise ValueError(
                f"activation {activation!r} is not a torch.nn module (try GELU, ReLU, SiLU, Tanh)"
            )
        blocks: list[nn.Module] = []
        width = in_features
        for _ in range(layers):
            blocks += [nn.Linear(width, nodes), act()]
            width = nodes
        blocks.append(nn.Linear(width, out_features))
        self.net = nn.Sequential(*blocks)

    def forward(self, x):
        return self.net(x)
