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

_U64 = 1 << 64

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
    does not depend on the batch it arrives in or on its position. A torch
    tensor is hashed where it is (no copy to the host), with the same integer
    arithmetic: the result equals the numpy one bit for bit.

    Parameters
    ----------
    X : ndarray or torch.Tensor of shape (n_samples, ...)
        Any dtype; the row's bytes are hashed.
    seed : int

    Returns
    -------
    u : ndarray or torch.Tensor of float64, shape (n_samples,)
        The array type and device of ``X``.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.arange(6.0).reshape(3, 2)
    >>> u = row_uniforms(X, seed=0)
    >>> bool(np.all(u == row_uniforms(X[::-1], seed=0)[::-1]))
    True
    """
    if type(X).__module__.split(".")[0] == "torch":
        return _row_uniforms_torch(X, seed)
    X = np.ascontiguousarray(np.asarray(X))
    n = X.shape[0]
    if n == 0:
        return np.zeros(0)
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


def _signed(v):
    """A uint64 value as the int64 with the same bits."""
    v = int(v) % _U64
    return v - _U64 if v >= 1 << 63 else v


def _shr(h, k):
    """Logical right shift of int64 words holding uint64 bits (torch shifts arithmetically)."""
    return (h >> k) & ((1 << (64 - k)) - 1)


def _mix64_torch(h):
    """:func:`mix64` on int64 tensors holding uint64 bits (multiplication wraps the same)."""
    h = (h ^ _shr(h, 30)) * _signed(MIX[1])
    h = (h ^ _shr(h, 27)) * _signed(MIX[2])
    return h ^ _shr(h, 31)


def _row_uniforms_torch(X, seed):
    """:func:`row_uniforms` of a tensor, computed on its device."""
    import torch

    n = X.shape[0]
    if n == 0 or X[0].numel() == 0:
        raw = torch.zeros((n, 0), dtype=torch.uint8, device=X.device)
    else:
        raw = X.detach().contiguous().reshape(n, -1).view(torch.uint8)
    pad = (-raw.shape[1]) % 8
    if pad:
        raw = torch.cat([raw, raw.new_zeros((n, pad))], dim=1)
    W = raw.shape[1] // 8
    words = (raw.contiguous().view(torch.int64) if W
             else torch.zeros((n, 0), dtype=torch.int64, device=X.device))
    with np.errstate(over="ignore"):
        pos_u = np.arange(1, W + 1, dtype=np.uint64) * MIX[0]
    pos = torch.from_numpy(pos_u.view(np.int64)).to(X.device)
    h = _mix64_torch(words ^ pos[None, :]) * (pos | 1)[None, :]
    while h.shape[1] > 1:  # xor is associative: a tree reduction equals numpy's reduce
        if h.shape[1] % 2:
            h = torch.cat([h, h.new_zeros((n, 1))], dim=1)
        h = h[:, 0::2] ^ h[:, 1::2]
    acc = h[:, 0] if W else torch.zeros(n, dtype=torch.int64, device=X.device)
    with np.errstate(over="ignore"):
        seed_word = _signed(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * MIX[0])
    acc = _mix64_torch(acc ^ seed_word)
    return _shr(acc, 11).to(torch.float64) / float(2**53)


def assign_rows(u, weights):
    """Index of the mixture component of each row from its uniform ``u``.

    Parameters
    ----------
    u : ndarray or torch.Tensor of shape (n_samples,)
        Uniforms in [0, 1) (:func:`row_uniforms`); a tensor stays on its device.
    weights : array-like of shape (n_components,)
        Mixing probabilities.

    Returns
    -------
    component : ndarray or torch.Tensor of int, shape (n_samples,)

    Examples
    --------
    >>> assign_rows([0.1, 0.5, 0.9], [0.25, 0.75]).tolist()
    [0, 1, 1]
    """
    cw = np.cumsum(np.asarray(weights, dtype=np.float64))
    cw[-1] = 1.0
    if type(u).__module__.split(".")[0] == "torch":
        import torch

        edges = torch.as_tensor(cw, dtype=torch.float64, device=u.device)
        return torch.searchsorted(edges, u.to(torch.float64), right=True).clamp_max_(len(cw) - 1)
    return np.minimum(np.searchsorted(cw, u, side="right"), len(cw) - 1)
