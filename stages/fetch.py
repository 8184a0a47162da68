"""Stage fetch: params data.archive -> data/archive.zip."""
import sys

from mriseg.fetch import FetchError, fetch_archive
from mriseg.params import load_params


def main():
    data = load_params()["data"]
    try:
        fetch_archive(data["archive"], "data/archive.zip", sha256=data.get("sha256"))
    except FetchError as e:
        sys.exit(f"fetch: error: {e}")


if __name__ == "__main__":
    main()
