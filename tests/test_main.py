"""The command line demo (the README's first command)."""

import io

import numpy as np
import pytest

from sklearn_e2cm.__main__ import demo, main


@pytest.mark.slow
def test_demo_table_and_the_top_of_the_curve():
    out = io.StringIO()
    table = demo(targets=(0.3, 1.0), out=out)
    text = out.getvalue()
    assert list(table["model"]) == ["full chain", "E2CM", "E2CM"]
    e2cm = table[table["model"] == "E2CM"]
    assert abs(e2cm["test_flops"].iloc[0] - 0.3) < 0.05
    assert np.all(e2cm["test_accuracy"] > 0.9)
    assert "stops rising at" in text  # 1.0 is above the curve's best point: said, not hidden
    assert abs(e2cm["test_flops"].iloc[1] - 1.0) < 0.05  # and the budget is still spent


def test_main_rejects_an_unknown_command(capsys):
    with pytest.raises(SystemExit):
        main(["nope"])
    assert "invalid choice" in capsys.readouterr().err


def test_help_and_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    from sklearn_e2cm import __version__

    assert __version__ in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = capsys.readouterr().out
    assert "--targets PHI" in text and "``" not in text
