"""``python -m iegkit``: the same as the ``iegkit`` console script."""

from iegkit.cli import main

raise SystemExit(main())
