"""The network spec: notation, layers, building modules, named networks.

The Python API mirrors the notation, one function per layer kind:

    from convladder.spec import network, block, conv, bn, relu, dropout, maxpool, gap, softmax
    spec = network(
        block("conv1", conv(8, 3, bias=False), relu(), bn(), dropout(0.05)),
        block("trans1", maxpool(2), conv(8, 1, bias=False)),
        block("out", gap(), conv(10, 1, bias=False), softmax(log=True)),
    )
"""

from __future__ import annotations

from convladder.spec.layers import Block, Layer, NetworkSpec


def conv(out_channels: int, kernel_size: int = 3, *, stride: int | None = None, padding: int | None = None,
         dilation: int | None = None, groups: int | None = None, bias: bool | None = None) -> Layer:
    return Layer("conv", out_channels=out_channels, kernel_size=kernel_size, stride=stride, padding=padding,
                 dilation=dilation, groups=groups, bias=bias)


def maxpool(kernel_size: int = 2, *, stride: int | None = None, padding: int | None = None,
            ceil_mode: bool | None = None) -> Layer:
    return Layer("maxpool", kernel_size=kernel_size, stride=stride, padding=padding, ceil_mode=ceil_mode)


def avgpool(kernel_size: int = 2, *, stride: int | None = None, padding: int | None = None,
            ceil_mode: bool | None = None) -> Layer:
    return Layer("avgpool", kernel_size=kernel_size, stride=stride, padding=padding, ceil_mode=ceil_mode)


def bn() -> Layer:
    return Layer("bn")


def dropout(p: float) -> Layer:
    return Layer("dropout", p=p)


def act(kind: str = "relu", **kwargs: float) -> Layer:
    """An activation by name: one the notation takes (`spec.kinds.SPEC_ACTIVATIONS`: relu, leakyrelu(negative_slope=),
    prelu, elu(alpha=), selu, tanh, sigmoid, silu, gelu, and any registered since)."""
    return Layer(kind, **kwargs)


def relu() -> Layer:
    return Layer("relu")


def gap() -> Layer:
    return Layer("gap")


def flatten() -> Layer:
    return Layer("flatten")


def fc(out_features: int, *, bias: bool | None = None) -> Layer:
    return Layer("fc", out_features=out_features, bias=bias)


def softmax(log: bool = False) -> Layer:
    return Layer("logsoftmax" if log else "softmax")


def block(name: str | None, *layers: Layer, role: str | None = None, repeat: int = 1) -> Block:
    """A named block; repeat=3: its layers built once and applied 3 times (the text's `name[...]*3`)."""
    return Block(name, tuple(layers), role, repeat)


def network(*blocks: Block, name: str | None = None, input_shape: tuple[int, int, int] = (1, 28, 28)) -> NetworkSpec:
    return NetworkSpec(tuple(blocks), name=name, input_shape=input_shape)


__all__ = ["Block", "Layer", "NetworkSpec", "conv", "maxpool", "avgpool", "bn", "dropout", "act", "relu",
           "gap", "flatten", "fc", "softmax", "block", "network"]
