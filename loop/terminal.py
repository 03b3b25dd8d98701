"""Everything printed to a terminal goes through `clean`.

Questions, answers, rationales and teacher output are data from files and
from models: an ESC sequence in them (ESC[2J clears the screen, OSC 8 forges
links, OSC 52 writes the clipboard) would be executed by the terminal, not
shown.  `SafeConsole` is the Rich console of every command: Rich turns every
string it prints (print arguments, table cells, panels) into Text through
`Console.render_str`, so cleaning there covers all of them at one point, and
the styles Rich itself emits are untouched.  JSON output needs nothing:
json.dumps escapes control characters.
"""

from __future__ import annotations

import re

from rich.console import Console

# C0 controls except tab and newline, DEL, and the C1 controls (0x9b is a one-byte CSI)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean(text: str) -> str:
    """`text` with every terminal control character shown as its escape (ESC → \\x1b)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class SafeConsole(Console):
    """A Rich console that shows control characters instead of sending them."""

    def render_str(self, text: str, *args, **kwargs):
        return super().render_str(clean(text), *args, **kwargs)


__all__ = ["SafeConsole", "clean"]


class StepProgress:
    """A transient "step  done/total" bar on a terminal while a step runs
    (teach, verify, mine, evaluate: seconds to minutes with nothing else to
    see).  Not for `train`, which draws the trainer's own bar; nothing at all
    when the output is not a terminal (logs get the step lines only)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._bar = None
        self._task = None

    def update(self, step: str, done: int, total: int | None) -> None:
        if not self.console.is_terminal:
            return
        if self._bar is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("{task.description:<9}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=self.console, transient=True)
            self._bar.start()
            self._task = self._bar.add_task(step, total=total)
        self._bar.update(self._task, completed=done, total=total, description=step)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
