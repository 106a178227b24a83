"""CIFAR-style residual networks small enough to train on a CPU.

The layout follows torchvision's ResNet (``stem``, ``layer1`` .. ``layer3``,
``avgpool``, ``fc``) so that the torch stage splitter can cut the network into
stages by its named children.
"""

import numbers

import torch
from torch import nn

__all__ = ["BasicBlock", "ResNetSmall", "resnet_small"]

_MIN_INPUT_SIZE = 8


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (He et al., 2016).

    ``conv-bn-relu-conv-bn`` plus the shortcut, then ReLU. When the stride or
    the number of channels changes, the shortcut is a 1x1 convolution followed
    by batch normalisation ("option B"); otherwise it is the identity.

    Parameters
    ----------
    in_planes : int
        Number of input channels.
    planes : int
        Number of output channels.
    stride : int, default=1
        Stride of the first convolution (and of the shortcut).
    """

    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        else:
            self.downsample = None
        self.stride = stride

    def forward(self, x):
        """Residual block output for a batch ``x`` of shape ``(N, C, H, W)``.

        Parameters
        ----------
        x : torch.Tensor of shape (N, in_planes, H, W)

        Returns
        -------
        out : torch.Tensor of shape (N, planes, H / stride, W / stride)
            ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.
        """
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNetSmall(nn.Module):
    """CIFAR-style ResNet with three groups of :class:`BasicBlock`.

    Use :func:`resnet_small` to build one; it validates the arguments.

    The named children are, in order: ``stem`` (conv-bn-relu), ``layer1``,
    ``layer2``, ``layer3`` (``nn.Sequential`` of blocks, widths ``w``,
    ``2w``, ``4w``, strides 1, 2, 2), ``avgpool`` (``nn.AdaptiveAvgPool2d(1)``)
    and ``fc`` (``nn.Linear(4w, n_classes)``).

    Parameters
    ----------
    depth : int
        Number of weighted layers, ``6n + 2`` (``n`` blocks per group).
    width : int
        Channels of the stem and the first group.
    in_channels : int
        Channels of the input images.
    n_classes : int
        Outputs of the final linear layer.
    input_size : int or tuple of int
        Height and width the network is built for.
    zero_init_residual : bool, default=False
        Start the last batch norm of every block at zero.

    Attributes
    ----------
    depth, width, in_channels, n_classes : int
        The constructor arguments.
    input_size : tuple of int
        ``(H, W)`` the network was built for (informative: any size of at least
        8x8 works thanks to the adaptive pooling).
    input_shape : tuple of int
        ``(in_channels, H, W)`` of one sample.
    """

    def __init__(self, depth, width, in_channels, n_classes, input_size, zero_init_residual=False):
        super().__init__()
        n_blocks = (depth - 2) // 6
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        self.layer1 = self._make_group(width, width, n_blocks, stride=1)
        self.layer2 = self._make_group(width, 2 * width, n_blocks, stride=2)
        self.layer3 = self._make_group(2 * width, 4 * width, n_blocks, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, n_classes)

        self.depth = depth
        self.width = width
        self.in_channels = in_channels
        self.n_classes = n_classes
        self.input_size = tuple(input_size)
        self.input_shape = (in_channels, *self.input_size)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.kaiming_uniform_(m.weight, nonlinearity="linear")
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    @staticmethod
    def _make_group(in_planes, planes, n_blocks, stride):
        blocks = [BasicBlock(in_planes, planes, stride)]
        blocks += [BasicBlock(planes, planes, 1) for _ in range(n_blocks - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x):
        """Class scores (logits) of shape ``(N, n_classes)`` for ``x`` of shape ``(N, C, H, W)``.

        Parameters
        ----------
        x : torch.Tensor of shape (N, in_channels, H, W)

        Returns
        -------
        logits : torch.Tensor of shape (N, n_classes)
        """
        x = self.stem(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


def _check_positive_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {name}={value!r}.")
    return int(value)


def resnet_small(
    depth=20, width=16, in_channels=1, n_classes=10, input_size=28, *, zero_init_residual=False
):
    """Build a CIFAR-style ResNet (He et al., 2016) sized for small images.

    ``depth = 6n + 2``: a 3x3 convolution stem, three groups of ``n``
    :class:`BasicBlock` (two 3x3 convolutions each) with widths ``width``,
    ``2 * width``, ``4 * width`` and strides 1, 2, 2, global average pooling
    and a linear classifier. Shortcuts that change shape are 1x1 convolutions
    with batch normalisation (option B). Weights use Kaiming initialisation,
    so the network is reproducible under :func:`torch.manual_seed`.

    Parameters
    ----------
    depth : int, default=20
        Number of weighted layers, ``6n + 2`` with ``n >= 1``: 8, 14, 20, 32,
        44, 56, 110, ...
    width : int, default=16
        Channels of the first group (the paper's ResNet-20 uses 16).
    in_channels : int, default=1
        Channels of the input images (1 for MNIST-like data, 3 for colour).
    n_classes : int, default=10
        Number of output class scores.
    input_size : int or tuple of int, default=28
        Height and width (or one size for square images) the network is built
        for; at least 8. Recorded as ``input_size`` / ``input_shape`` for FLOP
        counting; any input of at least 8x8 is accepted by ``forward``.
    zero_init_residual : bool, default=False
        Start every block's last batch-norm scale at zero, so each block is
        initially the identity (sometimes helps short trainings).

    Returns
    -------
    model : ResNetSmall
        A ``torch.nn.Module`` whose named children are ``stem``, ``layer1``,
        ``layer2``, ``layer3``, ``avgpool`` and ``fc``, in that order.

    Raises
    ------
    ValueError
        If ``depth`` is not ``6n + 2`` or another argument is out of range.

    See Also
    --------
    train_classifier : Train the returned network on arrays or a DataLoader.

    Examples
    --------
    >>> import torch
    >>> from sklearn_e2cm.models import resnet_small
    >>> _ = torch.manual_seed(0)
    >>> model = resnet_small(depth=8, width=4, n_classes=3, input_size=8)
    >>> [name for name, _ in model.named_children()]
    ['stem', 'layer1', 'layer2', 'layer3', 'avgpool', 'fc']
    >>> model(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 3])
    """
    if (
        isinstance(depth, bool)
        or not isinstance(depth, numbers.Integral)
        or depth < 8
        or (depth - 2) % 6 != 0
    ):
        raise ValueError(
            "depth must be 6n + 2 for an integer n >= 1 (8, 14, 20, 32, 44, 56, 110, ...); "
            f"got depth={depth!r}."
        )
    width = _check_positive_int("width", width)
    in_channels = _check_positive_int("in_channels", in_channels)
    n_classes = _check_positive_int("n_classes", n_classes, minimum=2)
    if isinstance(input_size, numbers.Integral) and not isinstance(input_size, bool):
        size = (int(input_size), int(input_size))
    else:
        try:
            size = tuple(input_size)
        except TypeError:
            size = ()
        if len(size) != 2 or not all(
            isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in size
        ):
            raise ValueError(
                "input_size must be an integer or a pair of integers (height, width); "
                f"got input_size={input_size!r}."
            )
        size = (int(size[0]), int(size[1]))
    if min(size) < _MIN_INPUT_SIZE:
        raise ValueError(
            f"input_size must be at least {_MIN_INPUT_SIZE}x{_MIN_INPUT_SIZE}; "
            f"got input_size={input_size!r}."
        )
    return ResNetSmall(
        int(depth), width, in_channels, n_classes, size, zero_init_residual=bool(zero_init_residual)
    )
