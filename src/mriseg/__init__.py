"""mriseg: segment brain MRI into white matter, gray matter, CSF and background."""

__version__ = "0.1.0"

# Label values 0, 1, 2, 3. CSF came last, so that masks of three classes (a model without CSF, the tutorial's
# slices) read as they always have; a three-class model is the first three.
CLASS_NAMES = ("white_matter", "gray_matter", "background", "csf")


def first_line(error):
    """An exception as one line for a user-facing message (some exceptions carry no text)."""
    return (str(error).splitlines() or [type(error).__name__])[0]
