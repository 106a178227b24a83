"""Seeds and row hashing: reproducible randomness that does not depend on batches.

* :func:`seed_of` turns any ``random_state`` into one integer seed.
* :func:`row_uniforms` draws one uniform number per row from the row's bytes
  and a seed, so time sharing sends a sample to the same threshold vector
  whatever batch it arrives in; :func:`assign_rows` turns the uniforms into
  mixture components.
* :func:`mix64` is the splitmix64 finaliser the hashes are built from.

This module imports nothing of the package (it is the bottom layer).
"""

import numpy as np

__all__ = ["MIX", "mix64", "seed_of", "row_uniforms", "assign_rows"]

#: splitmix64 constants.
MIX = np.array([0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB], dtype=np.uint64)


def mix64(h):
    """splitmix64 finaliser on a uint64 array (wrapping arithmetic).

    Parameters
    ----------
    h : ndarray of uint64

    Returns
    -------
    ndarray of uint64
    """
    with np.errstate(over="ignore"):
        h = (h ^ (h >> np.uint64(30))) * MIX[1]
        h = (h ^ (h >> np.uint64(27))) * MIX[2]
        return h ^ (h >> np.uint64(31))


def seed_of(random_state):
    """One integer seed from an int, a Generator, a RandomState or None.

    An int is returned unchanged, so searches seeded with the same int start
    from the same thresholds for the same target. ``None`` draws fresh
    entropy.

    Parameters
    ----------
    random_state : int, Generator, RandomState, SeedSequence, BitGenerator or None

    Returns
    -------
    seed : int

    Examples
    --------
    >>> seed_of(7)
    7
    """
    if random_state is None:
        return int(np.random.SeedSequence().entropy % (2**63))
    if isinstance(random_state, (int, np.integer)) and not isinstance(random_state, bool):
        return int(random_state)
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(2**63 - 1))
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(np.iinfo(np.int32).max))
    if isinstance(random_state, (np.random.SeedSequence, np.random.BitGenerator)):
        return int(np.random.default_rng(random_state).integers(2**63 - 1))
    raise ValueError(
        f"random_state must be an int, a numpy Generator, RandomState, SeedSequence or "
        f"BitGenerator, or None; got {random_state!r}."
    )


def row_uniforms(X, seed=0):
    """One uniform number in [0, 1) per row, a deterministic hash of the row.

    Time sharing sends each sample to one of the hull vertices with a number
    drawn from its own content and the seed, so the decision for a sample
    does not depend on the batch it arrives in or on its position.

    Parameters
    ----------
    X : ndarray of shape (n_samples, ...)
        Any dtype; the row's bytes are hashed.
    seed : int

    Returns
    -------
    u : ndarray of float64, shape (n_samples,)

    Examples
    --------
    >>> import numpy as np
    >>> X = np.arange(6.0).reshape(3, 2)
    >>> u = row_uniforms(X, seed=0)
    >>> bool(np.all(u == row_uniforms(X[::-1], seed=0)[::-1]))
    True
    """
    X = np.ascontiguousarray(np.asarray(X))
    n = X.shape[0]
    raw = X.reshape(n, -1).view(np.uint8).reshape(n, -1)
    pad = (-raw.shape[1]) % 8
    if pad:
        raw = np.concatenate([raw, np.zeros((n, pad), np.uint8)], axis=1)
    words = np.ascontiguousarray(raw).view(np.uint64)
    with np.errstate(over="ignore"):
        pos = np.arange(1, words.shape[1] + 1, dtype=np.uint64) * MIX[0]
        h = mix64(words ^ pos[None, :])
        acc = np.bitwise_xor.reduce(h * (pos[None, :] | np.uint64(1)), axis=1)
        acc = mix64(acc ^ (np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * MIX[0]))
    return (acc >> np.uint64(11)).astype(np.float64) / float(2**53)


def assign_rows(u, weights):
    """Index of the mixture component of each row from its uniform ``u``.

    Parameters
    ----------
    u : ndarray of shape (n_samples,)
        Uniforms in [0, 1) (:func:`row_uniforms`).
    weights : array-like of shape (n_components,)
        Mixing probabilities.

    Returns
    -------
    component : ndarray of int, shape (n_samples,)

    Examples
    --------
    >>> assign_rows([0.1, 0.5, 0.9], [0.25, 0.75]).tolist()
    [0, 1, 1]
    """
    cw = np.cumsum(np.asarray(weights, dtype=np.float64))
    cw[-1] = 1.0
    return np.minimum(np.searchsorted(cw, u, side="right"), len(cw) - 1)
