"""Stage unzip: data/archive.zip -> data/MRIs/{MRIs,Segmentations} (validated pairs)."""
import sys

from mriseg.archive import ArchiveError, extract_archive
from mriseg.params import load_params


def main():
    data = load_params()["data"]
    try:
        n = extract_archive("data/archive.zip", "data/MRIs", max_extracted_mb=data["max_extracted_mb"])
    except ArchiveError as e:
        sys.exit(f"unzip: error: {e}")
    print(f"extracted {n} image/mask pairs -> data/MRIs")


if __name__ == "__main__":
    main()
