"""Fixtures shared by the torch test modules: 8×8 digit images and a tiny trained ResNet."""

import numpy as np
import pytest
from sklearn.datasets import load_digits


@pytest.fixture(scope="module")
def digit_images():
    """(X_train, y_train, X_test, y_test): digits as (n, 1, 8, 8) float32 images in [0, 1]."""
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).reshape(-1, 1, 8, 8).astype(np.float32)
    return X[:1200], y[:1200], X[1200:], y[1200:]


@pytest.fixture(scope="module")
def tiny_resnet(digit_images):
    """A depth-8, width-8 ResNet trained for 2 epochs on ``digit_images`` (one per module:
    tests may switch its train/eval mode)."""
    torch = pytest.importorskip("torch")
    from sklearn_e2cm.models import resnet_small, train_classifier

    Xtr, ytr, _, _ = digit_images
    torch.manual_seed(0)
    model = resnet_small(depth=8, width=8, in_channels=1, n_classes=10, input_size=8)
    train_classifier(model, Xtr, ytr, epochs=2, batch_size=64, random_state=0)
    return model
