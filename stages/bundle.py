"""Stage bundle: models/views/<view>.pt -> models/model.pt, the views and their aggregation weights in one
file: what the evaluate stage scores and `mriseg predict --model` takes."""
import sys

from mriseg.errors import stage_error
from mriseg.models import bundle_views
from mriseg.params import load_params


def main():
    params = load_params()
    weights = params["aggregate"]["weights"]
    bundle_views({view: f"models/views/{view}.pt" for view in params["views"]}, weights, "models/model.pt")
    print("bundle: " + ", ".join(f"{view} x{weights.get(view, 1.0)}" for view in params["views"])
          + " -> models/model.pt")


if __name__ == "__main__":
    sys.exit(stage_error("bundle", main))
