"""mriseg: segment brain MRI slices into white matter, gray matter and background."""

__version__ = "0.1.0"

CLASS_NAMES = ("white_matter", "gray_matter", "background")  # label values 0, 1, 2


def first_line(error):
    """An exception as one line for a user-facing message (some exceptions carry no text)."""
    return (str(error).splitlines() or [type(error).__name__])[0]
