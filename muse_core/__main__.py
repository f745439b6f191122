"""``python -m muse_core ...`` runs the ``muse`` command (see muse_core.cli)."""

from .cli import main

raise SystemExit(main())
