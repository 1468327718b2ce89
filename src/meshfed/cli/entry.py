"""The ``meshfed`` console script.

Stop signals (Ctrl-C, SIGTERM, SIGHUP) become interrupts before the heavier modules load (about
half a second on a small machine), so one that comes then ends the command quietly, with
``128 + signal``, instead of a traceback from the middle of an import.
"""

from __future__ import annotations

import sys

from meshfed import interrupts


def run() -> None:
    interrupts.install()
    try:
        from meshfed.cli.main import main
    except KeyboardInterrupt as exc:
        sys.stderr.write(f"interrupted ({interrupts.signal_name(exc)}) while starting\n")
        sys.exit(interrupts.exit_code(exc))
    main()
