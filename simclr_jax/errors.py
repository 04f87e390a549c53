"""The error a user can fix: one line naming the field, file or path, and the fix.

Raised by config validation and by the data code (a folder without the split, a dataset not
prepared); the command lines print it as `error: ...` without a traceback. A ValueError, so
code that catches ValueError keeps working.
"""


class ConfigError(ValueError):
  """A configuration value or input that cannot work; the message names it and the fix."""
