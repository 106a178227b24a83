"""Threshold search, hull and time sharing on cached exit tables."""

import numpy as np
import pytest

from sklearn_e2cm._hashing import assign_rows, row_uniforms, seed_of
from sklearn_e2cm._thresholds import (
    GRID,
    ExitTable,
    bisection_search,
    coordinate_path,
    cumulative_cost,
    evaluate_mixtures,
    first_exit_stage,
    mixture_exits,
    random_starts,
    sweep,
    sweep_with_extremes,
    time_sharing,
    upper_hull,
)
from sklearn_e2cm._thresholds.coordinate import _AscentData, _coordinate_step


def _table(N=400, M=4, seed=0, weights=False, last_head=False, exit_scale=0.05):
    rng = np.random.default_rng(seed)
    a = np.linspace(1.0, 5.0, M)
    conf = rng.beta(a[None, :], 2.0, size=(N, M))
    correct = rng.random((N, M)) < 0.25 + 0.7 * conf
    stage_flops = rng.uniform(0.5, 2.0, M)
    exit_flops = exit_scale * rng.uniform(0.5, 1.5, M)
    if not last_head:
        exit_flops[-1] = 0.0
    w = rng.uniform(0.2, 2.0, N) if weights else None
    pred = rng.integers(0, 3, size=(N, M))
    return ExitTable(conf, correct, stage_flops, exit_flops, last_head, w, pred_labels=pred,
                     classes=np.array(["a", "b", "c"]))


def _reference(table, T):
    """Per-sample loop: exit stage, cost and score of one threshold vector."""
    conf, correct = table.conf, table.correct
    M = table.n_stages
    cost_vec = cumulative_cost(table.stage_flops, table.exit_flops, np.asarray(T) < 1,
                               table.last_head)
    w = np.full(table.n_samples, 1.0 / table.n_samples) if table.weights is None else (
        table.weights)
    exits = np.empty(table.n_samples, dtype=int)
    for i in range(table.n_samples):
        exits[i] = M - 1
        for j in range(M - 1):
            if conf[i, j] > T[j]:
                exits[i] = j
                break
    return exits, float(w @ cost_vec[exits]), float(w @ correct[np.arange(len(exits)), exits])


# ---------------------------------------------------------------------------- evaluation
@pytest.mark.parametrize("weights", [False, True])
def test_evaluate_matches_reference_loop(weights):
    table = _table(weights=weights)
    rng = np.random.default_rng(1)
    for _ in range(10):
        T = rng.random(3)
        T[rng.random(3) < 0.3] = 1.0
        exits, c, s = _reference(table, T)
        np.testing.assert_array_equal(table.exit_stages(T), exits)
        assert table.evaluate(T) == pytest.approx((c, s), abs=1e-12)
        np.testing.assert_array_equal(table.predict_indices(T),
                                      table.pred_labels[np.arange(table.n_samples), exits])
    # one vector per sample (time sharing)
    Trows = rng.random((table.n_samples, 3))
    np.testing.assert_array_equal(table.exit_stages(Trows), first_exit_stage(table.conf, Trows))


@pytest.mark.parametrize("M", [4, 17, 19])  # uint16 codes with a lookup table, int64 without
def test_exit_codes_on_the_grid_and_off_it_agree(M):
    table = _table(N=300, M=M, weights=True)
    m = np.random.default_rng(2).integers(0, GRID + 1, M - 1)
    codes = table.exit_codes(grid_index=m)
    np.testing.assert_array_equal(codes, table.exit_codes(thresholds=m / GRID))
    assert codes.dtype == table.code_dtype
    assert (table.lowest_bit_table is None) == (M - 1 > 16)
    assert (table.bisection_lookup is None) == (M - 1 > 16)
    exits = table.exits_of_codes(codes)
    np.testing.assert_array_equal(exits, table.exit_stages(m / GRID))
    np.testing.assert_array_equal(
        (table.correct_codes >> exits) & 1, table.correct[np.arange(table.n_samples), exits])
    c, s = table.cost_and_score(exits, table.costs(m / GRID))
    assert (c, s) == table.evaluate(m / GRID)


@pytest.mark.parametrize("weights", [False, True])
def test_weighted_mean_and_its_terms(weights):
    table = _table(N=50, weights=weights)
    v = np.random.default_rng(0).random(50)
    w = np.full(50, 1 / 50) if table.weights is None else table.weights
    assert table.weighted_mean(v) == pytest.approx(float(w @ v), abs=1e-12)
    np.testing.assert_allclose(table.weighted_mean(v, per_sample=True), w * v, atol=1e-15)


def test_predict_indices_needs_pred_labels():
    t = ExitTable(np.random.rand(5, 2), np.ones((5, 2), bool), [1, 1], [0, 0], False)
    with pytest.raises(ValueError, match="pred_labels"):
        t.predict_indices([0.5])


# ----------------------------------------------------------------------------- bisection
@pytest.mark.parametrize("weights", [False, True])
def test_bisection_meets_target_and_reports_exact_cost_score(weights):
    table = _table(N=2000, M=5, weights=weights)
    for target in (0.3, 0.5, 0.8):
        T, conv, c, s = bisection_search(table, target, random_state=0, return_cost_score=True)
        assert conv
        assert abs(c - target) <= 5e-4
        assert (c, s) == pytest.approx(table.evaluate(T), abs=1e-12)
        assert np.all(T * GRID == np.round(T * GRID))  # on the grid


def test_bisection_many_stages_without_lookup_table():
    table = _table(N=300, M=19)  # 18 early exits: bit codes without a lookup table
    T, conv, c, s = bisection_search(table, 0.5, random_state=0, return_cost_score=True)
    assert conv and abs(c - 0.5) <= 5e-4
    assert (c, s) == pytest.approx(table.evaluate(T), abs=1e-12)


def test_sweep_bisect_is_reproducible_and_exact():
    table = _table(N=1000)
    targets = np.linspace(0.05, 1, 40)
    T1, c1, s1 = sweep(table, targets, method="bisect", random_state=3)
    T2, c2, s2 = sweep(table, targets, method="bisect", random_state=3)
    np.testing.assert_array_equal(T1, T2)
    ce, se = table.evaluate_many(T1)
    np.testing.assert_allclose(c1, ce, atol=1e-12)
    np.testing.assert_allclose(s1, se, atol=1e-12)


def test_random_starts_are_keyed_by_seed_and_target():
    a = random_starts(11, [0.25, 0.5, 0.75], 6)
    assert a.shape == (3, 6) and a.min() >= 0 and a.max() <= GRID
    # a target's start ignores the other targets and ulp-level differences
    np.testing.assert_array_equal(random_starts(11, [0.5], 6)[0], a[1])
    np.testing.assert_array_equal(random_starts(11, [np.linspace(0, 1, 1001)[250]], 6)[0], a[0])
    assert not np.array_equal(random_starts(12, [0.5], 6)[0], a[1])
    # roughly uniform over the grid
    u = random_starts(0, np.linspace(0.001, 1, 1000), 4).ravel() / GRID
    assert abs(u.mean() - 0.5) < 0.03 and abs((u < 0.25).mean() - 0.25) < 0.03


def test_seed_of_accepts_ints_generators_and_randomstates():
    assert seed_of(7) == 7 and seed_of(np.int64(7)) == 7
    assert seed_of(np.random.RandomState(0)) == seed_of(np.random.RandomState(0))
    assert seed_of(np.random.default_rng(0)) == seed_of(np.random.default_rng(0))
    assert isinstance(seed_of(None), int)
    assert seed_of(np.random.SeedSequence(3)) == seed_of(np.random.SeedSequence(3))
    assert seed_of(np.random.PCG64(3)) == seed_of(np.random.PCG64(3))
    np.testing.assert_array_equal(random_starts(np.int64(5), [0.5], 3),
                                  random_starts(5, [0.5], 3))
    assert random_starts(np.int32(-1), [0.5], 3).shape == (1, 3)
    with pytest.raises(ValueError, match="random_state must be"):
        seed_of("zero")


def test_sweep_point_equals_the_single_target_search():
    """Each swept target is the bisection at that target alone; grids nest."""
    table = _table(N=1500, M=5, seed=2)
    coarse = np.linspace(0, 1, 21)[1:]
    fine = np.linspace(0, 1, 101)[1:]
    Tc, cc, sc = sweep(table, coarse, random_state=5)
    Tf, cf, sf = sweep(table, fine, random_state=5)
    for k, t in enumerate(coarse):
        T1, _ = bisection_search(table, t, random_state=5)
        np.testing.assert_array_equal(T1, Tc[k])
        i = int(np.argmin(np.abs(fine - t)))
        np.testing.assert_array_equal(Tf[i], Tc[k])
    # so the finer sweep's best point within any budget is at least as good
    for b in (0.3, 0.5, 0.8):
        assert sf[cf <= b].max() >= sc[cc <= b].max()


@pytest.mark.parametrize("weights", [False, True])
def test_mixture_evaluation_matches_a_per_sample_loop(weights):
    table = _table(N=300, M=4, seed=9, weights=weights)
    T = np.array([[0.9, 0.8, 0.7], [0.5, 0.6, 0.9], [0.3, 0.2, 1.0]])
    mixtures = [(np.array([0]), np.array([1.0])), (np.array([0, 1]), np.array([0.3, 0.7])),
                (np.array([1, 2]), np.array([0.6, 0.4]))]
    u = np.random.default_rng(1).random(table.n_samples)
    costs, scores = evaluate_mixtures(table, T, mixtures, u)
    w = (np.full(table.n_samples, 1 / table.n_samples) if table.weights is None
         else table.weights)
    for p, (v, wv) in enumerate(mixtures):
        c_ref = s_ref = 0.0
        for i in range(table.n_samples):
            comp = 0 if len(v) == 1 or u[i] < wv[0] else 1
            ex, _, _ = _reference(table, T[v[comp]])
            cvec = cumulative_cost(table.stage_flops, table.exit_flops, T[v[comp]] < 1,
                                   table.last_head)
            c_ref += w[i] * cvec[ex[i]]
            s_ref += w[i] * table.correct[i, ex[i]]
        assert costs[p] == pytest.approx(c_ref, abs=1e-12)
        assert scores[p] == pytest.approx(s_ref, abs=1e-12)
        exits, cost = mixture_exits(table, T, v, wv, u)
        assert table.weighted_mean(cost) == pytest.approx(c_ref, abs=1e-12)
    # without uniforms: the expectation over the mixture weights
    ce, se = evaluate_mixtures(table, T, mixtures)
    vc, vs = table.evaluate_many(T)
    np.testing.assert_allclose(ce, [wv @ vc[v] for v, wv in mixtures], atol=1e-12)
    np.testing.assert_allclose(se, [wv @ vs[v] for v, wv in mixtures], atol=1e-12)


@pytest.mark.parametrize("method", ["bisect", "coordinate"])
def test_sweep_with_extremes_appends_all_zeros_and_all_ones(method):
    table = _table(N=500, M=5, weights=True)
    targets = np.linspace(0, 1, 11)[1:]
    tg, T, c, s = sweep_with_extremes(table, targets, method=method, random_state=4)
    T0, c0, s0 = sweep(table, targets, method=method, random_state=4)
    np.testing.assert_array_equal(tg[:-2], targets)
    assert tg.dtype == np.float64 and np.isnan(tg[-2:]).all()
    np.testing.assert_array_equal(T, np.vstack([T0, np.zeros(4), np.ones(4)]))
    ce, se = table.evaluate_many(T[-2:])
    np.testing.assert_array_equal(c, np.append(c0, ce))
    np.testing.assert_array_equal(s, np.append(s0, se))
    assert c[-2] == pytest.approx(table.min_cost(), abs=1e-12)  # all at the first exit
    assert c[-1] == pytest.approx(table.costs(np.ones(4))[-1], abs=1e-12)  # the base model


def test_sweep_unknown_method():
    with pytest.raises(ValueError, match="Unknown threshold search method 'newton'.*'bisect'"):
        sweep(_table(), [0.5], method="newton")
    with pytest.raises(TypeError, match="n_lambdas"):
        sweep(_table(), [0.5], method="bisect", n_lambdas=3)


# ---------------------------------------------------------------------------- coordinate
@pytest.mark.parametrize("weights", [False, True])
def test_coordinate_step_is_the_exact_1d_optimum(weights):
    """Brute force over every candidate threshold of one stage (and 'off')."""
    table = _table(N=150, M=4, weights=weights, exit_scale=0.2)
    rng = np.random.default_rng(0)
    data = _AscentData.of(table, min_gain=0.0)
    for _ in range(12):
        T = rng.random(3)
        lam = rng.choice([0.0, 0.05, 0.3, 1.0, 3.0])
        j = int(rng.integers(3))
        codes = table.exit_codes(thresholds=T)

        def objective(t):
            T2 = T.copy()
            T2[j] = t
            c, s = table.evaluate(T2)
            return s - lam * c

        cands = np.concatenate([[0.0, 1.0], np.unique(table.conf[:, j])])
        best = max(objective(t) for t in cands)
        t_new = _coordinate_step(table, codes, T.copy(), j, lam, data)
        got = objective(T[j] if t_new is None else t_new)
        assert got == pytest.approx(best, abs=1e-12)
        assert got >= objective(T[j]) - 1e-12


def test_coordinate_path_points_are_exact_and_costs_fall_with_lambda():
    table = _table(N=800, M=5)
    lams = np.linspace(0, 4, 25)
    T, c, s, lam = coordinate_path(table, lambdas=lams)
    np.testing.assert_array_equal(lam, lams)
    ce, se = table.evaluate_many(T)
    np.testing.assert_allclose(c, ce, atol=1e-12)
    np.testing.assert_allclose(s, se, atol=1e-12)
    assert np.all(np.diff(c) <= 1e-12)
    assert np.all((T >= 0) & (T <= 1))
    # lambda = 0 from the base model: at least as good as the base model
    assert s[0] >= table.evaluate(np.ones(4))[1] - 1e-12


def test_coordinate_sweep_serves_each_target_within_budget():
    table = _table(N=1500, M=5)
    targets = np.linspace(0.01, 1, 100)
    T, c, s = sweep(table, targets, method="coordinate", n_lambdas=40)
    reachable = targets >= c.min()
    assert np.all(c[reachable] <= targets[reachable] + 1e-12)
    # a larger budget never gets a worse point
    assert np.all(np.diff(s) >= -1e-12)


def test_coordinate_hull_beats_bisection_hull_on_tuning_data():
    table = _table(N=3000, M=6, seed=2)
    targets = np.linspace(0, 1, 301)[1:]
    _, cb, sb = sweep(table, targets, method="bisect", random_state=0)
    _, cc, sc = sweep(table, targets, method="coordinate")
    grid = np.linspace(max(cb.min(), cc.min()) + 0.02, 0.9, 30)
    hb, hc = upper_hull(cb, sb), upper_hull(cc, sc)
    vb = np.interp(grid, cb[hb], sb[hb])
    vc = np.interp(grid, cc[hc], sc[hc])
    assert np.mean(vc - vb) > 0
    assert np.min(vc - vb) > -0.01


@pytest.mark.parametrize("weights", [False, True])
def test_coordinate_min_gain_auto_is_one_sample_per_6000(weights):
    table = _table(N=12000, M=4, weights=weights)
    w = table.weights
    n_eff = table.n_samples if w is None else 1.0 / float(np.sum(w**2))
    auto = sweep(table, [0.3, 0.6], method="coordinate", n_lambdas=20)
    explicit = sweep(table, [0.3, 0.6], method="coordinate", n_lambdas=20,
                     min_gain=max(1.0, n_eff / 6000))
    for a, b in zip(auto, explicit):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="min_gain must be a number of samples or 'auto'"):
        sweep(table, [0.3], method="coordinate", min_gain="big")


# ----------------------------------------------------------------------------- hull
def _check_hull(c, s, h):
    hc, hs = c[h], s[h]
    assert np.all(np.diff(hc) > 0)
    assert np.all(np.diff(hs) >= 0)
    slopes = np.diff(hs) / np.diff(hc)
    assert np.all(np.diff(slopes) <= 1e-9)  # concave
    # dominates every point: no point above the piecewise-linear hull
    inside = (c >= hc[0]) & (c <= hc[-1])
    assert np.all(s[inside] <= np.interp(c[inside], hc, hs) + 1e-9)
    assert np.all(s[c >= hc[-1]] <= hs[-1] + 1e-12)
    assert np.all(s[c <= hc[0]] <= hs[0] + 1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_upper_hull_is_concave_and_dominates_random_points(seed):
    rng = np.random.default_rng(seed)
    c = rng.random(300)
    s = np.sqrt(c) + 0.2 * rng.random(300)
    s[::17] = np.round(s[::17], 1)  # ties
    c[::13] = c[0]
    _check_hull(c, s, upper_hull(c, s))


@pytest.mark.parametrize("method", ["bisect", "coordinate"])
def test_hull_of_a_sweep_is_concave_and_dominates_swept_points(method):
    table = _table(N=1000, M=5)
    T, c, s = sweep(table, np.linspace(0, 1, 201)[1:], method=method, random_state=0)
    _check_hull(c, s, upper_hull(c, s))


def test_time_sharing_meets_any_target_on_a_segment():
    hull_c = np.array([0.1, 0.25, 0.6, 0.9])
    rng = np.random.default_rng(0)
    for target in rng.uniform(0.1, 0.9, 50):
        v, w = time_sharing(hull_c, target)
        assert w.sum() == pytest.approx(1.0)
        assert np.all(w >= 0)
        assert w @ hull_c[v] == pytest.approx(target, abs=1e-12)
        if len(v) == 2:
            assert v[1] == v[0] + 1
    assert time_sharing(hull_c, 0.05)[0].tolist() == [0]
    assert time_sharing(hull_c, 0.95)[0].tolist() == [3]


def test_time_sharing_between_two_vertices_on_a_table():
    """The realised cost of per-row time sharing meets the target on 20k rows."""
    table = _table(N=20000, M=4, seed=5)
    T, c, s = sweep(table, np.linspace(0, 1, 101)[1:], method="coordinate")
    h = upper_hull(c, s)
    X = np.random.default_rng(0).normal(size=(table.n_samples, 3))
    u = row_uniforms(X, seed=7)
    for target in np.linspace(c[h][0], c[h][-1], 9)[1:-1]:
        v, w = time_sharing(c[h], target)
        Tv = T[h[v]]
        comp = assign_rows(u, w)
        exits = table.exit_stages(Tv[comp])
        costs = table.costs(Tv)[comp, exits]
        assert abs(costs.mean() - target) < 0.01
        assert w @ table.evaluate_many(Tv)[0] == pytest.approx(target, abs=1e-12)


# ----------------------------------------------------------------------------- layout
def test_submodules_import_each_other_in_one_direction():
    """table and hull at the bottom, the searches above, sweep on top; no other package code."""
    import ast
    import pathlib

    import sklearn_e2cm._thresholds as pkg

    allowed = {
        "table": set(),
        "hull": set(),
        "bisection": {"table"},
        "coordinate": {"table", "hull"},
        "sweep": {"bisection", "coordinate"},
    }
    root = pathlib.Path(pkg.__file__).parent
    for name, ok in allowed.items():
        tree = ast.parse((root / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                assert node.module in ok, (name, node.module)
            elif isinstance(node, ast.ImportFrom) and node.level == 2:
                assert node.module in {"_hashing", "_backend"}, (name, node.module)
            elif isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("sklearn_e2cm"), (name, node.module)


@pytest.mark.parametrize("weights", [False, True])
def test_exit_table_to_frame_summarises_every_stage(weights):
    table = _table(N=300, M=4, weights=weights)
    frame = table.to_frame()
    assert list(frame.columns) == ["stage", "cost", "exit_flops", "score", "mean_confidence"]
    w = table.weights if weights else np.full(300, 1 / 300)
    for j in range(4):  # a per-stage loop as the reference
        assert frame["score"][j] == pytest.approx(float(w @ table.correct[:, j]), abs=1e-12)
        assert frame["mean_confidence"][j] == pytest.approx(float(w @ table.conf[:, j]),
                                                            abs=1e-12)
    np.testing.assert_allclose(frame["cost"], table.full_cost, rtol=1e-12)


def test_every_head_off_costs_exactly_one_whatever_the_number_of_stages():
    rng = np.random.default_rng(0)
    for M in range(2, 40):  # sums of 9+ values change order between sum() and cumsum()
        c, e = rng.random(M), rng.random(M)
        assert cumulative_cost(c, e, np.zeros(M - 1, bool), last_head=False)[-1] == 1.0
