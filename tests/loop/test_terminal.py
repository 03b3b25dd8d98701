"""loop/terminal.py: one escaping point for everything printed, and the live step bar."""

from __future__ import annotations

import io
import json

from rich.table import Table

from loop.terminal import SafeConsole, StepProgress, clean

ESC = "\x1b"


def test_clean_shows_control_characters():
    assert clean(f"a{ESC}[2Jb\x07c\x9bd") == "a\\x1b[2Jb\\x07c\\x9bd"
    assert clean("tab\tand\nnewline stay") == "tab\tand\nnewline stay"


def test_safe_console_escapes_strings_and_table_cells_but_keeps_its_styles():
    out = io.StringIO()
    c = SafeConsole(file=out, force_terminal=True, color_system="standard", width=100, highlight=False)
    t = Table()
    t.add_column("q")
    t.add_row(f"evil {ESC}[2J cell")
    c.print(f"[bold]title[/] {ESC}]52;c;aGVsbG8=\x07")
    c.print(t)
    text = out.getvalue()
    assert f"{ESC}[2J" not in text and f"{ESC}]52" not in text
    assert "\\x1b[2J" in text and "\\x1b]52" in text
    assert f"{ESC}[1m" in text  # Rich's own bold is still sent


def test_trace_does_not_send_escape_sequences(tmp_path, capsys):
    from loop.cli.main import main
    from loop.config.workspace import init_workspace

    ws = tmp_path / "ws"
    init_workspace(ws, "tiny")
    f = tmp_path / "evil.jsonl"
    f.write_text(json.dumps({"id": "evil", "question": f"Clear {ESC}[2J the screen?", "answer": "1"}) + "\n")
    assert main(["data", "add", str(f), "-w", str(ws)]) == 0
    capsys.readouterr()
    assert main(["trace", "evil", "-w", str(ws)]) == 0
    out = capsys.readouterr().out
    assert ESC not in out and "\\x1b[2J" in out
    assert main(["data", "list", "-w", str(ws)]) == 0
    out = capsys.readouterr().out
    assert ESC not in out and "\\x1b[2J" in out


def test_step_progress_draws_on_a_terminal_only():
    out = io.StringIO()
    bar = StepProgress(SafeConsole(file=out, force_terminal=True, width=80))
    bar.update("teach", 5, 8)
    bar.close()
    assert "teach" in out.getvalue() and "5/8" in out.getvalue()
    quiet = io.StringIO()
    bar = StepProgress(SafeConsole(file=quiet, force_terminal=False, width=80))
    bar.update("teach", 5, 8)
    bar.close()
    assert quiet.getvalue() == ""
