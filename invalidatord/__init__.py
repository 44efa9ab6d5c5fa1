"""invalidatord: keeps Amazon CloudFront caches fresh when the origin changes."""

from __future__ import annotations

__version__ = "0.1.0"
