"""``slimforge cache list`` and ``slimforge cache clear``: the cache of steps, measurements and optimized results
(registered on the main app)."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer
from rich.table import Table

from slimforge.cli.app import app
from slimforge.cli.render import console

cache_app = typer.Typer(no_args_is_help=True, help="The cache of built steps, measurements and optimized results "
                        "($SLIMFORGE_CACHE_DIR, default ~/.cache/slimforge; capped by $SLIMFORGE_CACHE_MAX_GB, "
                        "default 5).")
app.add_typer(cache_app, name="cache")


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _ago(t: float) -> str:
    s = max(time.time() - t, 0.0)
    return f"{s:.0f} s ago" if s < 120 else f"{s / 60:.0f} min ago" if s < 7200 else f"{s / 3600:.1f} h ago" \
        if s < 172800 else f"{s / 86400:.0f} days ago"


@cache_app.command("list")
def list_cache(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Entries (kind, key, size, last used), their total, the cap and the location."""
    from slimforge.plan.cache import cache_root
    from slimforge.plan.cache_admin import cache_entries, max_cache_bytes

    root, entries, cap = cache_root(), cache_entries(), max_cache_bytes()
    total = sum(e.size_bytes for e in entries)
    if as_json:
        console.print_json(json.dumps({"location": str(root), "total_bytes": total, "max_bytes": cap,
                                       "entries": [e.to_dict() for e in reversed(entries)]}))
        return
    if entries:
        table = Table(title="slimforge cache (most recently used first)")
        for col in ("kind", "key", "size", "last used"):
            table.add_column(col, justify="right" if col == "size" else "left")
        for e in reversed(entries):
            table.add_row(e.kind, e.path.name + ("" if e.complete else " (being written)"), _mb(e.size_bytes),
                          _ago(e.last_used))
        console.print(table)
    console.print(f"{len(entries)} entries, {_mb(total)} of {_mb(cap)} (cap) in {root}", soft_wrap=True)


@cache_app.command("clear")
def clear(dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would go, remove nothing.")] = False
          ) -> None:
    """Remove every entry slimforge made in the cache; anything else in that folder is left alone."""
    from slimforge.plan.cache import cache_root
    from slimforge.plan.cache_admin import cache_entries, clear_cache

    entries = cache_entries() if dry_run else clear_cache()
    total = sum(e.size_bytes for e in entries)
    verb = "would remove" if dry_run else "removed"
    console.print(f"{verb} {len(entries)} entries ({_mb(total)}) from {cache_root()}", soft_wrap=True)
