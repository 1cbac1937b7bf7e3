"""A tiny residual network covering every step kind, for fast plan tests."""

import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, culled: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, groups=2, bias=False)
        self.bn2 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.down = nn.Conv2d(4, 6, 1, stride=2)
        self.conv3 = nn.Conv2d(6, 6, 3, padding=1)
        self.culled = culled
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        out = self.bn1(self.conv1(x))
        if not self.culled:
            out = self.relu(out)
        out = self.bn2(self.conv2(out)) + out
        out = torch.relu(out)
        out = self.down(out)
        out = self.conv3(out) + out
        return self.fc(torch.flatten(self.pool(out), 1))


def tiny(seed: int = 0, culled: bool = False) -> TinyNet:
    torch.manual_seed(seed)
    net = TinyNet(culled)
    with torch.no_grad():
        for bn in (net.bn1, net.bn2):
            bn.running_mean.uniform_(-0.3, 0.3)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.3, 0.3)
    return net.eval()
