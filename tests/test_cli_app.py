"""The CLI shell: errors become one line and an exit code, never a traceback."""

from __future__ import annotations

import typer

from medfuse.cli import app as cli
from medfuse.errors import RegistrationError


def _app_raising(exc: BaseException) -> typer.Typer:
    app = typer.Typer()

    @app.command()
    def explode() -> None:
        raise exc

    @app.command()
    def other() -> None:  # a second command, so Typer keeps the sub-command name
        """Unused."""

    return app


def test_a_medfuse_error_is_one_line_with_its_stage_exit_code(monkeypatch, capsys):
    monkeypatch.setattr(cli, "app", _app_raising(RegistrationError("no overlap between fixed and moving")))
    code = cli.main(["explode"])
    assert code == RegistrationError.exit_code == 4
    assert capsys.readouterr().err.strip().splitlines() == ["medfuse: error: no overlap between fixed and moving"]


def test_an_unexpected_exception_is_one_line_and_exit_70(monkeypatch, capsys):
    monkeypatch.delenv("MEDFUSE_DEBUG", raising=False)
    monkeypatch.setattr(cli, "app", _app_raising(ZeroDivisionError("division by zero")))
    code = cli.main(["explode"])
    assert code == 70
    assert capsys.readouterr().err.strip().splitlines() == [
        "medfuse: internal error: ZeroDivisionError: division by zero (set MEDFUSE_DEBUG=1 for details)"
    ]


def test_version_and_usage_errors_exit_as_typer_says(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip().startswith("medfuse ")
    assert cli.main(["no-such-command"]) == 2
