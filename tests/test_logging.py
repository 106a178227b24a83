"""Messages go through the package's logger; verbose shows them even without logging set up."""

import logging

from sklearn_e2cm import _backend
from sklearn_e2cm._fitting.training import run_epochs


def test_verbose_messages_are_logged_records(caplog):
    caplog.set_level(logging.INFO, logger="sklearn_e2cm")
    run_epochs(8, 2, lambda b: 1.0, batch_size=4, desc="unit", verbose=1,
               end_epoch=lambda e, loss: {"loss": loss})
    lines = [r.getMessage() for r in caplog.records if r.name == "sklearn_e2cm"]
    assert lines == ["unit (epoch 1/2): loss=1.0", "unit (epoch 2/2): loss=1.0"]


def test_quiet_messages_are_debug_records(caplog):
    caplog.set_level(logging.DEBUG, logger="sklearn_e2cm")
    _backend.log("quiet", verbose=0)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [(logging.DEBUG, "quiet")]


def test_without_logging_configured_verbose_writes_to_stderr(capsys, monkeypatch):
    monkeypatch.setattr(_backend, "_logging_configured", lambda: False)
    _backend.log("shown", verbose=1)
    _backend.log("hidden", verbose=0)
    err = capsys.readouterr().err
    assert "shown" in err and "hidden" not in err
