"""Stage split: data/MRIs -> data/manifest.csv (one row per pair: paths, ids, split)."""
import sys

from mriseg.manifest import list_pairs, make_split, write_manifest
from mriseg.errors import stage_error
from mriseg.params import load_params


def main():
    p = load_params()["split"]
    df = make_split(list_pairs("data/MRIs"), by=p["by"], test_size=p["test_size"], val_size=p["val_size"],
                    seed=p["seed"], folds=p.get("folds", 0), fold=p.get("fold", 0))
    write_manifest(df, "data/manifest.csv")
    counts = df["split"].value_counts()
    print("split: " + ", ".join(f"{s} {counts.get(s, 0)}" for s in ("train", "val", "test")) + " -> data/manifest.csv")


if __name__ == "__main__":
    sys.exit(stage_error("split", main))
