"""Stage fetch: params data.archive -> data/archive.zip."""
import sys

from mriseg.errors import stage_error
from mriseg.fetch import fetch_archive
from mriseg.params import load_params


def main():
    data = load_params()["data"]
    fetch_archive(data["archive"], "data/archive.zip", sha256=data.get("sha256"))


if __name__ == "__main__":
    sys.exit(stage_error("fetch", main))
