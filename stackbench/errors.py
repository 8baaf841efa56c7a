"""One error type for bad input: its message is the one line a user sees (names the input and the fix)."""


class StackbenchError(Exception):
    """Bad input or a refused operation; the CLI prints `error: <message>` and exits 2."""


def close_matches(name: str, choices, n: int = 3) -> str:
    """' (did you mean a, b?)' for the nearest of `choices`, or ''."""
    import difflib

    near = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    return f" (did you mean {', '.join(near)}?)" if near else ""
