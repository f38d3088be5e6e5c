class ParadecError(ValueError):
    """A user-facing error: bad input or a missing model. Its message is one line, meant to be
    shown as-is (the CLI prints it without a traceback; the server answers it as a 4xx)."""
