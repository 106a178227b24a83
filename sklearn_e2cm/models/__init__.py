"""Small networks and a training loop to produce the trained models E²CM works on.

Pretrained weights are not shipped: :func:`resnet_small` builds a CIFAR-style
ResNet sized for 28x28 (or 8x8) images and :func:`train_classifier` trains it
(or any torch classifier) on a CPU in minutes.

This module needs PyTorch (``pip install 'sklearn-e2cm[torch]'``).
"""

try:
    import torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    from .._backend import TORCH_INSTALL_HINT

    raise ImportError(
        f"sklearn_e2cm.models needs PyTorch, which is not installed. {TORCH_INSTALL_HINT}"
    ) from exc

from ._resnet import BasicBlock, ResNetSmall, resnet_small
from ._training import train_classifier

__all__ = ["BasicBlock", "ResNetSmall", "resnet_small", "train_classifier"]
