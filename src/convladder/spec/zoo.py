"""Named networks: the text of each, what it is, and its parameter count (asserted in tests)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ZooEntry:
    text: str
    description: str
    params: int  # trainable parameters as PyTorch counts them (BN: 2C trainable)
    input_shape: tuple[int, int, int] = (1, 28, 28)


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
        "conv1[conv3x3(8, bias=false) relu bn dropout(0.05)] conv2[conv3x3(12, bias=false) relu bn dropout(0.05)] "
        "trans1[maxpool2x2 conv1x1(8, bias=false) relu bn] "
        "conv3[conv3x3(12, bias=false) relu bn dropout(0.05)] conv4[conv3x3(16, bias=false) relu bn dropout(0.05)] "
        "conv5[conv3x3(16, bias=false) relu bn dropout(0.05)] conv6[conv3x3(12, padding=1, bias=false) relu bn dropout(0.05)] "
        "out[gap conv1x1(10, bias=false) logsoftmax]",
        "reference: <= 8k params, no bias, no FC; >= 99.4 % MNIST test within 12-15 epochs (convladder train defaults)",
        7_944,
    ),
    "tiny6k": ZooEntry(
        "conv1[conv3x3(8, bias=false) relu bn dropout(0.05)] conv2[conv3x3(10, bias=false) relu bn dropout(0.05)] "
        "trans1[maxpool2x2 conv1x1(8, bias=false) relu bn] "
        "conv3[conv3x3(10, bias=false) relu bn dropout(0.05)] conv4[conv3x3(14, bias=false) relu bn dropout(0.05)] "
        "conv5[conv3x3(14, bias=false) relu bn dropout(0.05)] conv6[conv3x3(10, padding=1, bias=false) relu bn dropout(0.05)] "
        "out[gap conv1x1(10, bias=false) logsoftmax]",
        "tiny8k narrowed (conv2/conv3/conv6 to 10, conv4/conv5 to 14): 6,124 params; train with epochs=15",
        6_124,
    ),
    "course15k": ZooEntry(
        "conv1[conv3x3(10, bias=false) relu bn dropout(0.05)] conv2[conv3x3(16, bias=false) relu bn dropout(0.05)] "
        "trans1[maxpool2x2 conv1x1(10, bias=false) relu bn] "
        "conv3[conv3x3(16, bias=false) relu bn dropout(0.05)] conv4[conv3x3(16, bias=false) relu bn dropout(0.05)] "
        "conv5[conv3x3(16, bias=false) relu bn dropout(0.05)] conv6[conv3x3(16, padding=1, bias=false) relu bn dropout(0.05)] "
        "out[gap conv1x1(10, bias=false) logsoftmax]",
        "the course assignment: <= 15k params, <= 20 epochs, no bias, no FC, >= 99.4 % MNIST test",
        10_402,
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
