"""Names made safe for files."""


def slug(text: str) -> str:
    """A file-name-safe form of a group or set name (no path separators)."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text).strip("_").lower()
