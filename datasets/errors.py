"""The one exception type for bad user input anywhere in aavs.

The command line turns an :class:`InputError` into a one-line message on stderr and exit status 2;
any other exception is an internal failure (exit status 1). Messages name the file, key or value and
say what was expected.
"""


class InputError(Exception):
    """Bad input from the user: a file, a key or a value that is not what aavs expects."""
