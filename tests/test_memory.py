"""Heap trimming policy of the streaming passes."""

import sklearn_e2cm._memory as mem


def test_heap_guard_trims_only_after_growth(monkeypatch):
    rss = iter([100, 150, 400, 380, 390, 570, 300, 560, 610, 650])
    trims = []
    monkeypatch.setattr(mem, "resident_bytes", lambda: next(rss))
    monkeypatch.setattr(mem, "trim_heap", lambda: trims.append(1))
    g = mem.HeapGuard(slack=200)
    g.step()  # reference 100
    g.step()  # 150: within the slack
    assert not trims
    g.step()  # 400 > 100 + 200: trim; the reference waits for the next batch
    assert len(trims) == 1 and g.ref is None
    g.step()  # 380: the batch's working set is back; this is the reference
    assert g.ref == 380
    g.step()  # 390, 570: within the slack of 380 (no trim for pages taken back)
    g.step()
    assert len(trims) == 1
    g.step()  # 300 (memory freed), still no trim
    g.step()  # 560
    assert len(trims) == 1
    g.step()  # 610 > 580: trim
    g.step()  # 650: new reference (memory kept on purpose raises the floor)
    assert g.trims == 2 and g.ref == 650


def test_heap_guard_without_proc_trims_periodically(monkeypatch):
    trims = []
    monkeypatch.setattr(mem, "resident_bytes", lambda: None)
    monkeypatch.setattr(mem, "trim_heap", lambda: trims.append(1))
    g = mem.HeapGuard(fallback_every=4)
    for _ in range(10):
        g.step()
    assert len(trims) == 2


def test_resident_bytes_is_positive_on_linux():
    import sys

    r = mem.resident_bytes()
    if sys.platform.startswith("linux"):
        assert r is not None and r > 0
    mem.trim_heap()  # never fails


def test_heap_guard_periodic_mode_reads_no_rss(monkeypatch):
    trims = []
    monkeypatch.setattr(mem, "resident_bytes", lambda: 1 / 0)  # must not be called
    monkeypatch.setattr(mem, "trim_heap", lambda: trims.append(1))
    g = mem.HeapGuard(slack=None, fallback_every=16)
    for _ in range(33):
        g.step()
    assert len(trims) == 2
