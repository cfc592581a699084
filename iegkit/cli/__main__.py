"""``python -m iegkit.cli``: the ``iegkit`` command line."""

from iegkit.cli import main

raise SystemExit(main())
