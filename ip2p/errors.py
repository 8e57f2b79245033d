"""The one exception type for mistakes a user can fix.

Its message always says what was received, what was expected and how to fix it; the command
line prints it without a traceback and ComfyUI shows it in the node's error box.
"""

from __future__ import annotations


class IP2PError(ValueError):
    """A user-fixable problem (bad input, wrong model, missing file)."""
