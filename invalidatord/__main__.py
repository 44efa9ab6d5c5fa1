"""`python -m invalidatord` is the same as `invalidatord`."""

from __future__ import annotations

from invalidatord.cli import main

raise SystemExit(main())
