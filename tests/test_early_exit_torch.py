"""EarlyExitClassMeans on torch stages (tiny ResNet on 8x8 digits)."""

import pickle
import warnings

import joblib
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sklearn.base import clone  # noqa: E402
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis  # noqa: E402

from sklearn_e2cm import EarlyExitClassMeans  # noqa: E402
from sklearn_e2cm._thresholds import cumulative_cost  # noqa: E402
from sklearn_e2cm.stages import split_into_stages  # noqa: E402


@pytest.fixture(scope="module")
def data(digit_images):
    return digit_images


@pytest.fixture(scope="module")
def net(tiny_resnet):
    return tiny_resnet


@pytest.fixture(scope="module")
def stages(net):
    return split_into_stages(net)


@pytest.fixture(scope="module")
def fitted(stages, data):
    Xtr, ytr, _, _ = data
    return EarlyExitClassMeans(stages=stages, flops_target=0.5, batch_size=128,
                               random_state=0).fit(Xtr, ytr)


def _logits(net, X):
    with torch.inference_mode():
        return net(torch.from_numpy(X)).numpy()


# Float32 stage outputs recomputed in a batch of another size (the estimator's batches, the
# rows left after compaction) may differ in their last bits: a batch of one row takes another
# convolution kernel. Measured on this network: logits move by up to ~3e-6 and exit
# probabilities by up to ~5e-7. Decisions closer than these slacks to a tie or a threshold may
# go either way; every other decision must agree exactly.
LOGIT_SLACK = 1e-4
PROBA_SLACK = 1e-5


def _top2_gap(A):
    top2 = np.sort(A, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def test_base_model_reproduced_and_left_untouched(net, stages, data):
    Xtr, ytr, Xte, yte = data
    state = {k: v.clone() for k, v in net.state_dict().items()}
    net.train()
    clf = EarlyExitClassMeans(stages=stages, batch_size=100).fit(Xtr, ytr)
    assert net.training  # mode restored
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k])  # no weight or BN statistic changed
    logits = _logits(net.eval(), Xte)  # one batch; the estimator uses batches of 100
    clear = _top2_gap(logits) > LOGIT_SLACK
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(clf.predict(Xte)[clear], logits.argmax(1)[clear])
    assert np.all(clf.route(Xte).flops == 1.0)


def test_inputs_numpy_tensor_dataloader_agree(stages, data):
    Xtr, ytr, Xte, yte = data
    from torch.utils.data import DataLoader, TensorDataset

    a = EarlyExitClassMeans(stages=stages, batch_size=128, random_state=0,
                            flops_target=0.5).fit(Xtr, ytr)
    b = EarlyExitClassMeans(stages=stages, batch_size=128, random_state=0,
                            flops_target=0.5).fit(torch.from_numpy(Xtr), torch.from_numpy(ytr))
    loader = DataLoader(TensorDataset(torch.from_numpy(Xtr), torch.from_numpy(ytr)),
                        batch_size=100)
    c = EarlyExitClassMeans(stages=stages, random_state=0, flops_target=0.5).fit(loader)
    # c sums the (nonnegative) float32 stage vectors in batches of 100, not 128: a float32
    # sum of <= 128 terms is within 127 * eps32 / 2 ~ 7.6e-6 relative, inside rtol=1e-5
    for other in (b, c):
        for ca, cb in zip(a.class_means_, other.class_means_):
            np.testing.assert_allclose(ca, cb, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(a.predict(Xte), b.predict(Xte))
    assert c.predict(Xte).shape == (len(Xte),)


def test_routing_equals_per_sample_reference_and_compacts(fitted, stages, data):
    Xtr, ytr, Xte, yte = data
    clf = fitted
    res = clf.route(Xte)
    P = list(clf.staged_predict_proba(Xte))
    base = list(clf.staged_predict(Xte))[-1]
    T = clf.mixture_thresholds_[res.component]
    M = clf.n_stages_
    # route() runs each stage on the rows left (batches of any size), staged_predict_proba on
    # all rows: skip the rows with a confidence within PROBA_SLACK of a threshold or a near tie
    conf = np.stack([P[j].max(1) for j in range(M - 1)], axis=1)
    unsure = (np.any(np.abs(conf - T[:, :M - 1]) < PROBA_SLACK, axis=1)
              | np.any(np.stack([_top2_gap(P[j]) for j in range(M)], axis=1) < PROBA_SLACK,
                       axis=1))
    assert unsure.mean() < 0.01
    for i in np.flatnonzero(~unsure):
        for j in range(M):
            if j == M - 1 or P[j][i].max() > T[i, j]:
                pred = base[i] if j == M - 1 else clf.classes_[P[j][i].argmax()]
                break
        assert (res.exit_stage[i], res.y_pred[i]) == (j, pred)
        cost = cumulative_cost(clf.stage_flops_, clf.exit_flops_, T[i] < 1, last_head=False)
        assert res.flops[i] == pytest.approx(cost[j])
    # compaction: a stage only sees the rows that have not exited before it
    seen = [0] * M
    hooks = [st.register_forward_hook(lambda m, i, o, j=j: seen.__setitem__(j, seen[j] + len(o)))
             for j, st in enumerate(stages)]
    try:
        clf.predict(Xte)
    finally:
        for h in hooks:
            h.remove()
    reached = [(res.exit_stage >= j).sum() for j in range(M)]
    assert seen == reached
    assert seen[-1] < len(Xte)


def test_flops_from_flop_counter_and_overheads(fitted):
    clf = fitted
    assert clf.stage_flops_.shape == (clf.n_stages_,)
    assert np.all(clf.stage_flops_ > 0)
    # the stem conv of the 8-wide resnet: 2 * 1 * 8 * 3 * 3 * 8 * 8 multiply-adds
    assert clf.stage_flops_[0] == 2 * 1 * 8 * 9 * 64
    from sklearn_e2cm.exits.class_means import head_flops

    D = [c.shape[1] for c in clf.class_means_]
    for j in range(clf.n_stages_ - 1):
        assert clf.exit_flops_[j] == head_flops(D[j], 10, "euclidean", True)
    assert clf.exit_flops_[-1] == 0.0
    assert clf.cumulative_cost_[-1] > 1.0


def test_pooling_cost_counted(stages, data):
    Xtr, ytr, _, _ = data
    clf = EarlyExitClassMeans(stages=stages, pooling=("avg", 2), batch_size=256).fit(Xtr, ytr)
    from sklearn_e2cm.exits.class_means import head_flops

    for j in range(clf.n_stages_ - 1):
        D = clf.class_means_[j].shape[1]
        C, H, W = clf._adapter.output_shapes_[j]
        # adaptive average pooling to 2x2: every element is added once (0 if already 2x2)
        pool = 0 if (H, W) == (2, 2) else C * H * W
        assert clf._adapter.vector_flops_[j] == pool
        assert clf.exit_flops_[j] == head_flops(D, 10, "euclidean", True) + pool
        assert D == C * 4


def _assert_within(actual, desired, tol):
    """``|actual - desired| <= tol`` elementwise (``tol`` broadcasts), with the worst ratio."""
    err = np.abs(np.asarray(actual, dtype=np.float64) - desired)
    ratio = err / np.broadcast_to(tol, err.shape)
    assert np.all(ratio <= 1.0), (
        f"{np.sum(ratio > 1)} of {ratio.size} entries exceed the bound; worst "
        f"|diff| = {err.flat[np.argmax(ratio)]:.3g} is {ratio.max():.3g} x its bound")


def test_mahalanobis_on_pooled_torch_features_equals_lda(stages, data):
    """The whitened head is LDA (uniform priors) on the pooled float32 features.

    The head runs in the features' precision (float32), LDA in float64, so the comparison is
    split: (1) the fitted head evaluated in float64 equals LDA up to float64 rounding amplified
    by the covariance's condition number; (2) the float32 inference path stays within the
    worst-case float32 rounding bound of a D-term dot product (any summation order, hence any
    thread count or torch version); (3) predictions agree wherever the top two scores are
    further apart than that bound. A fixed ``atol`` does not work: the scores reach ~10³ and
    their float32 error ~10⁻⁴, which depends on the trained weights and the summation order.
    """
    Xtr, ytr, Xte, yte = data
    idx = np.concatenate([np.flatnonzero(ytr == k)[:100] for k in range(10)])  # balanced
    # one batch for fit and predict: the head sees exactly the features computed below
    bs = max(len(idx), len(Xte))
    clf = EarlyExitClassMeans(stages=stages, metric="mahalanobis", pooling="avg2",
                              batch_size=bs).fit(Xtr[idx], ytr[idx])
    ad = clf._adapter
    with ad.activate():
        Z = torch.from_numpy(Xtr[idx])
        Zt = torch.from_numpy(Xte)
        for j in range(2):
            Z, Zt = ad.run_stage(j, Z), ad.run_stage(j, Zt)
        F = ad.stage_vector(1, Z).double().numpy()
        Ft = ad.stage_vector(1, Zt).double().numpy()  # float32 values, exactly
    lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=clf.shrinkage_[1],
                                     priors=np.full(10, 0.1)).fit(F, ytr[idx])
    P_lda = lda.predict_proba(Ft)
    K, D = P_lda.shape[1], Ft.shape[1]
    head = clf._heads[1]
    # |x|·|W|ᵀ + |b|: the magnitude of the terms summed into each score
    mag = np.abs(Ft) @ np.abs(head.coef).T + np.abs(head.intercept)

    # (1) float64: both solve the same shrunk covariance; sums of D terms (eps64 each),
    # amplified by cond(Σ) (~10² here), bound the score differences. The head stores W and b
    # in the features' dtype (float32): their rounding moves each score by at most u·mag,
    # hence each p by at most expm1(2 u max_k mag_ik) min(p, 1 - p)
    assert head.coef.dtype == np.float32
    u = np.finfo(np.float32).eps / 2
    S64 = Ft @ head.coef.T.astype(np.float64) + head.intercept.astype(np.float64)
    P64 = np.exp(S64 - S64.max(1, keepdims=True))
    P64 /= P64.sum(1, keepdims=True)
    eps64 = np.finfo(np.float64).eps
    tol64 = D * np.linalg.cond(lda.covariance_) * eps64 * mag.max(1, keepdims=True)
    stored = np.expm1(2 * u * mag.max(1, keepdims=True)) * np.minimum(P_lda, 1 - P_lda)
    _assert_within(P64, P_lda, tol64 + stored)

    # (2) float32 path: |δs_ik| <= (D + 3) u mag_ik (u = eps32/2: the D-term dot product,
    # rounding W and b to float32, adding b) whatever the summation order; a softmax moves
    # each p by at most expm1(2 max_k |δs_ik|) min(p, 1 - p), plus its own float32 rounding
    delta = (D + 3) * u * mag.max(1, keepdims=True)
    P = list(clf.staged_predict_proba(Xte))[1]
    tol32 = (np.expm1(2 * delta) * np.minimum(P_lda, 1 - P_lda)
             + (K + 3) * u * P_lda + K * u)
    _assert_within(P, P_lda, tol32)

    # (3) predictions are exact wherever the float32 error cannot reorder the top two scores
    S = lda.decision_function(Ft)
    top2 = np.sort(S, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 2 * delta[:, 0]
    assert clear.mean() > 0.95  # the check below covers nearly every row
    pred = list(clf.staged_predict(Xte))[1]
    np.testing.assert_array_equal(pred[clear], lda.predict(Ft)[clear])


def test_clone_and_pickle_roundtrip(fitted, data, tmp_path):
    Xtr, ytr, Xte, yte = data
    c = clone(fitted)  # scikit-learn deep-copies non-estimator parameters: an equal network
    for a, b in zip(c.stages.parameters(), fitted.stages.parameters()):
        assert torch.equal(a, b)
    path = tmp_path / "e2cm.joblib"
    joblib.dump(fitted, path)
    loaded = joblib.load(path)
    np.testing.assert_array_equal(loaded.predict(Xte), fitted.predict(Xte))
    np.testing.assert_array_equal(loaded.route(Xte).flops, fitted.route(Xte).flops)
    again = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_allclose(again.predict_proba(Xte), fitted.predict_proba(Xte))


def test_clear_errors(stages, data):
    Xtr, ytr, Xte, yte = data
    from torch.utils.data import DataLoader

    fitted = EarlyExitClassMeans(stages=stages).fit(Xtr[:300], ytr[:300])
    with pytest.raises(ValueError, match=r"\(1, 8, 8\)"):
        fitted.predict(np.zeros((3, 1, 9, 9), np.float32))

    class Changing(torch.utils.data.Dataset):
        def __len__(self):
            return 64

        def __getitem__(self, i):
            side = 8 if i < 32 else 9
            return torch.zeros(1, side, side), i % 10

    with pytest.raises(ValueError, match="shape"):
        EarlyExitClassMeans(stages=stages).fit(DataLoader(Changing(), batch_size=32))

    class NaNStage(torch.nn.Module):
        def forward(self, x):
            return x * float("nan")

    bad = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), NaNStage(),
                              torch.nn.Linear(16, 10))
    with pytest.raises(ValueError, match="NaN"):
        EarlyExitClassMeans(stages=bad).fit(Xtr[:100], ytr[:100])
    Xnan = Xtr[:100].copy()
    Xnan[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        EarlyExitClassMeans(stages=stages).fit(Xnan, ytr[:100])


def test_missing_class_in_labels_is_explicit(stages, data):
    Xtr, ytr, _, _ = data
    keep = ytr != 9  # the network has 10 outputs but y only 9 classes
    with pytest.raises(ValueError, match="10 class scores for 9 classes"):
        EarlyExitClassMeans(stages=stages, final_classifier=True).fit(Xtr[keep], ytr[keep])
    with pytest.warns(UserWarning, match="10 scores.*9 classes"):
        clf = EarlyExitClassMeans(stages=stages).fit(Xtr[keep], ytr[keep])
    assert not clf._adapter.final_is_classifier


@pytest.mark.slow
def test_search_shares_one_forward_pass_over_the_network(stages, data):
    from sklearn_e2cm import FlopBudgetSearchCV
    from sklearn_e2cm.early_exit import fit_on_shared_rows, share_stage_outputs

    Xtr, ytr, Xte, yte = data
    est = EarlyExitClassMeans(stages=stages, batch_size=128, random_state=0)
    shared, _ = share_stage_outputs(clone(est), Xtr, ytr)
    assert shared is not None and isinstance(shared.vectors[0], torch.Tensor)
    rows = np.arange(0, len(ytr), 2)
    a = fit_on_shared_rows(clone(est).set_params(flops_target=0.5), shared, rows)
    b = clone(est).set_params(flops_target=0.5).fit(Xtr[rows], ytr[rows])
    for ca, cb in zip(a.class_means_, b.class_means_):
        np.testing.assert_allclose(ca, cb, rtol=1e-5, atol=1e-6)
    assert np.mean(a.predict(Xte) == b.predict(Xte)) > 0.99
    s = FlopBudgetSearchCV(est, flops_targets=40, cv=3, max_flops=0.5, random_state=0).fit(Xtr, ytr)
    u = FlopBudgetSearchCV(est, flops_targets=40, cv=3, max_flops=0.5, random_state=0,
                           share_stage_outputs=False).fit(Xtr, ytr)
    assert s.shared_stage_outputs_ and not u.shared_stage_outputs_
    np.testing.assert_allclose(s.cv_results_["mean_test_score"],
                               u.cv_results_["mean_test_score"], atol=0.01)
    assert s.best_estimator_.score(Xte, yte) > 0.5


@pytest.mark.slow
def test_search_rows_equal_gridsearchcv_on_a_network(stages, data):
    """Torch inputs (array or tensor): the search's rows are GridSearchCV's numbers."""
    from sklearn.model_selection import GridSearchCV

    from sklearn_e2cm import FlopBudgetSearchCV

    Xtr, ytr, Xte, yte = data
    est = EarlyExitClassMeans(stages=stages, batch_size=128, random_state=0, sweep_resolution=100)
    targets = [0.4, 0.6, 0.9]
    for X in (Xtr, torch.from_numpy(Xtr)):
        fb = FlopBudgetSearchCV(est, flops_targets=targets, cv=3).fit(X, ytr)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # targets below the cheapest cost
            gs = GridSearchCV(est, {"flops_target": targets}, cv=3).fit(X, ytr)
        assert fb.shared_stage_outputs_
        np.testing.assert_allclose(fb.cv_results_["mean_test_score"],
                                   gs.cv_results_["mean_test_score"], atol=1e-12)


@pytest.mark.slow
def test_shared_search_in_threads_leaves_the_network_mode_alone(net, data):
    from sklearn_e2cm import FlopBudgetSearchCV

    Xtr, ytr, Xte, yte = data
    stages = split_into_stages(net)
    was_training = net.training
    stages.train()
    try:
        est = EarlyExitClassMeans(stages=stages, batch_size=128, random_state=0)
        s1 = FlopBudgetSearchCV(est, flops_targets=20, cv=3, random_state=0,
                                n_jobs=1).fit(Xtr, ytr)
        s2 = FlopBudgetSearchCV(est, flops_targets=20, cv=3, random_state=0,
                                n_jobs=2).fit(Xtr, ytr)
        assert s1.shared_stage_outputs_ and s2.shared_stage_outputs_
        np.testing.assert_array_equal(s1.cv_results_["mean_test_score"],
                                      s2.cv_results_["mean_test_score"])
        assert all(m.training for m in stages.modules())  # the user's mode is kept
        assert all(m.training for m in s2.best_estimator_.stages.modules())
    finally:
        net.train(was_training)


def test_labels_in_another_order_than_the_network_outputs_warn(stages, data):
    Xtr, ytr, _, _ = data
    perm = np.array([3, 7, 1, 9, 0, 5, 2, 8, 6, 4])  # the user's names of the network's outputs
    with pytest.warns(UserWarning, match=r"k-th sorted label"):
        EarlyExitClassMeans(stages=stages, random_state=0).fit(Xtr, perm[ytr])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the right order: no warning
        EarlyExitClassMeans(stages=stages, random_state=0).fit(Xtr, ytr)
