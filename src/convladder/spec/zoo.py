"""Named networks: the text of each, what it is, and its parameter count (asserted in tests)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ZooEntry:
    text: str
    description: str
    params: int  # trainable parameters as PyTorch counts them (BN: 2C trainable)
    input_shape: tuple[int, int, int] = (1, 28, 28)


def reference_layout(conv1: int, conv2: int, trans1: int, conv3: int, conv4: int, conv5: int, conv6: int,
                     dropout: float = 0.05) -> str:
    """The reference networks' layout with these output channels: two 3x3 blocks, the transition (maxpool2x2 +
    1x1), four 3x3 blocks (the last padded), GAP and a 1x1 to the classes; relu bn dropout after each 3x3 block,
    no bias, no fully connected layer (the notes' method)."""
    drop = f" dropout({dropout:g})" if dropout else ""

    def block(name: str, channels: int, padding: str = "") -> str:
        return f"{name}[conv3x3({channels}{padding}, bias=false) relu bn{drop}]"

    return " ".join([block("conv1", conv1), block("conv2", conv2),
                     f"trans1[maxpool2x2 conv1x1({trans1}, bias=false) relu bn]",
                     block("conv3", conv3), block("conv4", conv4), block("conv5", conv5),
                     block("conv6", conv6, ", padding=1"), "out[gap conv1x1(10, bias=false) logsoftmax]"])


def _frontier_entry(budget: str, widths: tuple[int, ...], params: int, figures: str, more: str = "") -> ZooEntry:
    """A frontier network: the reference layout at `widths`, with its measured figures in the description."""
    return ZooEntry(reference_layout(*widths),
                    f"frontier, {budget} budget (tiny8k's layout at {'/'.join(map(str, widths))}): {figures} % "
                    f"final-epoch test (min / median / max of seeds 1-5, 12 epochs){more}", params)


ZOO: dict[str, ZooEntry] = {
    "pytorch-mnist": ZooEntry(
        "features[conv3x3(32) relu conv3x3(64) relu] "
        "pool[maxpool2x2 dropout(0.25)] "
        "head:output[flatten fc(128) relu dropout(0.5) fc(10) logsoftmax]",
        "pytorch/examples mnist CNN (Adadelta recipe): 98% of its parameters sit in the first fully connected layer",
        1_199_882,
    ),
    "keras-mnist-convnet": ZooEntry(
        "block1[conv3x3(32) relu maxpool2x2] block2[conv3x3(64) relu maxpool2x2] "
        "head[flatten dropout(0.5) fc(10) softmax]",
        "Keras example mnist_convnet (two conv/pool stages, dense softmax head)",
        34_826,
    ),
    "eip4-3rd": ZooEntry(
        "conv1[conv3x3(10) relu] conv2[conv3x3(10) relu] conv3[conv3x3(20) relu] "
        "trans1[maxpool2x2 conv1x1(10) relu] "
        "conv4[conv3x3(10) relu] conv5[conv3x3(20) relu] conv6[conv1x1(10) relu] "
        "out[conv7x7(10) flatten softmax]",
        "the lesson's 3rd network (Keras-style, with biases): 10,890 parameters, 7x7 kernel as output",
        10_890,
    ),
    # Reference networks (owned by train/; recipe and measured accuracies in docs/training.md).
    # The notes' method: 3x3 blocks, transition = maxpool2x2 + 1x1, relu bn (+ small dropout) after every
    # layer but the last, GAP then a 1x1 to the classes, no bias, no fully connected layer.
    "tiny8k": ZooEntry(
        reference_layout(8, 12, 8, 12, 16, 16, 12),
        "reference layout: <= 8k params, no bias, no FC; 12 epochs, the default recipe: final-epoch test 99.38 / "
        "99.42 / 99.54 % (min / median / max, fresh seeds 6-10: 4 of 5 >= 99.4; seeds 1-5 that chose the recipe: "
        "99.48 / 99.50 / 99.50)",
        7_944,
    ),
    "tiny6k": ZooEntry(
        reference_layout(8, 10, 8, 10, 14, 14, 10),
        "tiny8k narrowed (conv2/conv3/conv6 to 10, conv4/conv5 to 14): 6,124 params; train with epochs=15",
        6_124,
    ),
    "course15k": ZooEntry(
        reference_layout(10, 16, 10, 16, 16, 16, 16),
        "the course assignment's rules (<= 15k params, <= 20 epochs, no bias, no FC; the target >= 99.4 % MNIST test) "
        "in tiny8k's layout at 10/16/10/16/16/16/16",
        10_402,
    ),
    # The frontier (issue 14): the reference layout with every width scaled to sit just under a budget. Figures:
    # final-epoch MNIST test accuracy min / median / max over seeds 1-5, 12 epochs, the trainer's default
    # recipe, 2 CPU cores (bench/frontier-mnist-cpu.yaml; bench/results/frontier-mnist-cpu.md).
    **{f"frontier{budget}": _frontier_entry(budget, widths, params, *figures) for budget, widths, params, *figures in [
        ("2k", (4, 6, 4, 6, 7, 7, 6), 1_829, "98.68 / 98.82 / 98.83"),
        ("3k", (5, 7, 5, 7, 9, 9, 7), 2_741, "99.03 / 99.14 / 99.21"),
        ("4k", (6, 8, 6, 8, 11, 11, 8), 3_835, "99.14 / 99.24 / 99.35"),
        ("5k", (6, 9, 6, 9, 13, 13, 9), 4_927, "99.28 / 99.39 / 99.41"),
        ("10k", (9, 13, 9, 13, 18, 18, 13), 9_748, "99.42 / 99.50 / 99.55"),
        ("15k", (11, 16, 11, 16, 22, 22, 16), 14_523, "99.55 / 99.55 / 99.60",
         "; the default of `convladder train`: 99.50 / 99.54 / 99.60 on fresh seeds 6-10"),
        ("20k", (13, 19, 13, 19, 25, 25, 19), 19_441, "99.54 / 99.55 / 99.57"),
    ]},
    # Issue 33: the frontier's separable family (executors/families.py) at the 2k budget, tiny8k's block order
    # (2 blocks, transition, 4 blocks); tests/test_families.py checks this text is the generator's.
    "sep2k": ZooEntry(
        "conv1[conv3x3(10, bias=false) relu bn dropout(0.05)] "
        "conv2[conv3x3(10, groups=10, bias=false) conv1x1(14, bias=false) relu bn dropout(0.05)] "
        "trans1[maxpool2x2 conv1x1(10, bias=false) relu bn] "
        "conv3[conv3x3(10, groups=10, bias=false) conv1x1(14, bias=false) relu bn dropout(0.05)] "
        "conv4[conv3x3(14, groups=14, bias=false) conv1x1(14, bias=false) relu bn dropout(0.05)] "
        "conv5[conv3x3(14, groups=14, bias=false) conv1x1(14, bias=false) relu bn dropout(0.05)] "
        "conv6[conv3x3(14, padding=1, groups=14, bias=false) conv1x1(14, bias=false) relu bn dropout(0.05)] "
        "out[gap conv1x1(10, bias=false) logsoftmax]",
        "separable family, 2k budget: final-epoch test 99.17 / 99.28 / 99.35 % (min / median / max, fresh seeds "
        "6-10, 20 epochs, the default recipe); tiny8k's block order, each 3x3 after the first depthwise "
        "(groups = its input channels) + 1x1, widths 10/14/10/14; RF 28 at the output",
        1_976,
    ),
    # The separable family at the 5k budget: sep2k's order at widths 16/26/16/26, no dropout (chosen on seeds 1-5:
    # least 99.40 vs 99.34 with dropout 0.05, final val median 99.40 vs 99.32; bench/results/separable-5k-*.md)
    "sep5k": ZooEntry(
        "conv1[conv3x3(16, bias=false) relu bn] "
        "conv2[conv3x3(16, groups=16, bias=false) conv1x1(26, bias=false) relu bn] "
        "trans1[maxpool2x2 conv1x1(16, bias=false) relu bn] "
        "conv3[conv3x3(16, groups=16, bias=false) conv1x1(26, bias=false) relu bn] "
        "conv4[conv3x3(26, groups=26, bias=false) conv1x1(26, bias=false) relu bn] "
        "conv5[conv3x3(26, groups=26, bias=false) conv1x1(26, bias=false) relu bn] "
        "conv6[conv3x3(26, padding=1, groups=26, bias=false) conv1x1(26, bias=false) relu bn] "
        "out[gap conv1x1(10, bias=false) logsoftmax]",
        "separable family, 5k budget, no dropout: final-epoch test 99.32 / 99.41 / 99.56 % (min / median / max, "
        "fresh seeds 6-10, 15 epochs, the default recipe; seeds 1-5 that chose it: 99.40 / 99.44 / 99.50); "
        "sep2k's order at widths 16/26/16/26; RF 28 at the output",
        4_994,
    ),
    "vgg16": ZooEntry(
        " ".join(
            f"conv{b}_{i}[conv3x3({c}, padding=1) relu]" + (f" pool{b}[maxpool2x2]" if i == n else "")
            for b, (c, n) in enumerate([(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)], 1)
            for i in range(1, n + 1)
        )
        + " head[flatten fc(4096) relu dropout(0.5) fc(4096) relu dropout(0.5) fc(1000) softmax]",
        "VGG16 at 224x224x3: the notes' example of fully connected layers holding ~90% of the parameters",
        138_357_544,
        (3, 224, 224),
    ),
}
