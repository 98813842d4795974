"""Networks written the way people write them: nn.Module classes with functional calls and branches."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ExamplesNet(nn.Module):
    """pytorch/examples mnist Net (1,199,882 parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.dropout2(x)
        return F.log_softmax(self.fc2(x), dim=1)


class CourseNet(nn.Module):
    """The course's style: Sequential conv blocks, functional pooling, a 1x1, GAP, view."""

    def __init__(self) -> None:
        super().__init__()
        self.convblock1 = nn.Sequential(nn.Conv2d(1, 8, 3, bias=False), nn.ReLU(), nn.BatchNorm2d(8))
        self.convblock2 = nn.Sequential(nn.Conv2d(8, 12, 3, bias=False), nn.ReLU(), nn.BatchNorm2d(12))
        self.trans = nn.Conv2d(12, 8, 1, bias=False)
        self.convblock3 = nn.Sequential(nn.Conv2d(8, 12, 3, bias=False), nn.ReLU(), nn.BatchNorm2d(12))
        self.convblock4 = nn.Sequential(nn.Conv2d(12, 16, 3, bias=False), nn.ReLU(), nn.BatchNorm2d(16))
        self.convblock5 = nn.Sequential(nn.Conv2d(16, 16, 3, bias=False), nn.ReLU(), nn.BatchNorm2d(16))
        self.convblock6 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.ReLU(), nn.BatchNorm2d(16))
        self.out = nn.Conv2d(16, 10, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.convblock2(self.convblock1(x))
        x = F.max_pool2d(x, 2, 2)
        x = self.trans(x)
        x = self.convblock6(self.convblock5(self.convblock4(self.convblock3(x))))
        x = F.adaptive_avg_pool2d(x, 1)
        x = self.out(x)
        x = x.view(-1, 10)
        return F.log_softmax(x, dim=-1)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet18(nn.Module):
    """ResNet-18 in plain torch (torchvision's layout): 11,689,512 parameters at 1000 classes."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(64, 1)
        self.layer2 = self._make_layer(128, 2)
        self.layer3 = self._make_layer(256, 2)
        self.layer4 = self._make_layer(512, 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)

    def _make_layer(self, planes: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample), BasicBlock(planes, planes)]
        self.inplanes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


class ConcatNet(nn.Module):
    """Inception-style: two branches of different fields concatenated on channels, then a functional pool."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.branch3 = nn.Conv2d(8, 8, 3, padding=1)
        self.branch5 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.head = nn.Conv2d(16, 10, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = torch.cat([self.branch3(x), self.branch5(x)], dim=1)
        x = F.max_pool2d(F.relu(x), 2)
        return self.head(x)


class MisalignedNet(nn.Module):
    """Adds a strided branch, upsampled back, to an unstrided one: the jumps differ at the merge."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.b = nn.Conv2d(1, 4, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) + F.interpolate(self.b(x), scale_factor=2)


class GatedNet(nn.Module):
    """A squeeze-excite gate: x * sigmoid(fc(mean over the map)) — the gate sees the whole input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3)
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        gate = torch.sigmoid(self.fc(x.mean((2, 3))))
        return x * gate[:, :, None, None]


class DataDependentNet(nn.Module):
    """Control flow on the data: fx cannot trace it, so the hooks fallback reads it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.conv2 = nn.Conv2d(4, 4, 3)
        self.out = nn.Conv2d(4, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        if x.abs().sum() >= 0:  # always true, but fx cannot know
            x = x * 2
        x = F.max_pool2d(self.conv2(x), 2)
        return self.out(x).mean((2, 3))
