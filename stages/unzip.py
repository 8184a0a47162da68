"""Stage unzip: data/archive.zip -> data/MRIs, validated: the tutorial's slice pairs, or a cohort of labelled
volumes preprocessed once into memory-mappable arrays (mriseg.cohort)."""
import sys

from mriseg.archive import extract_archive
from mriseg.cohort import holds_volumes, prepare_cohort
from mriseg.errors import stage_error
from mriseg.params import load_params


def main():
    data = load_params()["data"]
    if holds_volumes("data/archive.zip"):
        n_subjects, n_slices = prepare_cohort(
            "data/archive.zip", "data/MRIs", labels=str(data["labels"]), pixel_size=data["pixel_size"],
            min_tissue=data["min_tissue"], max_volume_mb=data["max_volume_mb"],
            max_extracted_mb=data["max_extracted_mb"], skull_strip=data.get("skull_strip", "no"), csf=data.get("csf", "intensity"))
        print(f"preprocessed {n_subjects} subjects ({n_slices} axial slices with tissue) -> data/MRIs")
    else:
        print(f"extracted {extract_archive('data/archive.zip', 'data/MRIs', data['max_extracted_mb'])} "
              "image/mask pairs -> data/MRIs")


if __name__ == "__main__":
    sys.exit(stage_error("unzip", main))
