"""Exit codes of the ``cdmo`` command, named in one place."""

SUCCESS = 0
#: A known error: cdmo printed one line that says what went wrong and what to do.
ERROR = 1
#: Bad usage or bad input (a flag, a file, a snapshot field).
USAGE = 2
#: Something cdmo did not expect; the traceback shows with --debug.
UNEXPECTED = 3
