"""Turn bad-input exceptions into one line on stderr and exit code 2 (DESIGN.md section 6)."""

from __future__ import annotations

import functools
import sys

from .errors import UserError


def exits_cleanly(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper
