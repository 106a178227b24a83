"""Small shared helpers of the bottom layer (``sklearn_e2cm._backend``)."""

import numpy as np
import pytest

from sklearn_e2cm._backend import all_finite


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_all_finite_on_tensors_matches_isfinite(bad, dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.normal(size=(40, 3, 5)), dtype=getattr(torch, dtype))
    assert all_finite(x)
    for pos in [(0, 0, 0), (39, 2, 4), (17, 1, 3)]:
        y = x.clone()
        y[pos] = bad
        assert not all_finite(y) and not bool(y.isfinite().all())
    assert all_finite(torch.zeros(0, 3))
    assert all_finite(torch.arange(5)) and all_finite(torch.tensor([True, False]))
    assert not all_finite(torch.tensor([1 + 1j, complex(bad, 0)]))


def test_all_finite_on_arrays():
    assert all_finite(np.ones((3, 2))) and all_finite(np.array(["a"])) and all_finite([1, 2])
    assert not all_finite(np.array([1.0, np.nan])) and not all_finite([1.0, np.inf])
