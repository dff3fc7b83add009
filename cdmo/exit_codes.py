"""Exit codes of the ``cdmo`` command, named in one place."""

SUCCESS = 0
#: A known error: cdmo printed one line that says what went wrong and what to do.
ERROR = 1
#: Bad usage or bad input (a flag, a file, a snapshot field).
USAGE = 2
#: Something cdmo did not expect; the traceback shows with --debug.
UNEXPECTED = 3
#: Interrupted by Ctrl-C (SIGINT): 128 + 2, what shells and kubectl report.
INTERRUPTED = 130
#: stdout was closed early (``cdmo ... | head``): 128 + SIGPIPE, what a shell reports for
#: a tool that died of it; nothing is printed.
BROKEN_PIPE = 141
