"""The base of the finetune package's user-facing errors.

`python -m finetune` prints any `FinetuneError` as `error: ...` and exits with status 2. This
module imports nothing from the package, so every module can import it without a cycle.
"""

from __future__ import annotations


class FinetuneError(Exception):
    """A problem the user can fix (bad input, missing file, bad setting): no traceback."""
