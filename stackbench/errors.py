"""One error type for bad input: its message is the one line a user sees (names the input and the fix)."""


class StackbenchError(Exception):
    """Bad input or a refused operation; the CLI prints `error: <message>` and exits 2."""


def first_line(e: BaseException, limit: int = 200) -> str:
    """'TypeName: first line of its message' (at most `limit` characters of it), or 'TypeName' when it has none:
    a library's exception inside one of our one-line errors."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:limit]}" if text else type(e).__name__


def close_matches(name: str, choices, n: int = 3) -> str:
    """' (did you mean a, b?)' for the nearest of `choices`, or ''."""
    import difflib

    near = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    return f" (did you mean {', '.join(near)}?)" if near else ""
