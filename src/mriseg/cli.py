"""The `mriseg` command line: segment new scans, and turn labelled volumes into a training archive."""
import argparse
import sys


def predict_command(args):
    from .models import CheckpointError
    from tqdm import tqdm

    from .prediction import InputError, predict_files

    pixel = [float(v) for v in args.pixel_size.split(",")] if args.pixel_size else None
    try:
        failed = predict_files(args.model, args.out, args.inputs, device=args.device, batch_size=args.batch_size,
                               pixel_size=pixel, slice_thickness=args.slice_thickness,
                               log=lambda m: tqdm.write(m, file=sys.stderr))
    except (CheckpointError, InputError) as e:
        print(f"predict: error: {e}", file=sys.stderr)
        return 2
    return 1 if failed else 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="mriseg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="segment .npy slices or NIfTI/MGZ volumes, and measure tissue volumes")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help=".npy slices, folders of them, .nii/.nii.gz/.mgz volumes")
    p.add_argument("--model", default="models/model.pt", help="checkpoint written by the train stage")
    p.add_argument("--out", required=True, help="folder for masks, overlay PNGs and volumes.csv")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--pixel-size", help="mm per pixel of .npy slices: one value or ROW,COL (gives areas)")
    p.add_argument("--slice-thickness", type=float, default=1.0, help="mm, for the ml columns of .npy slices")
    p.set_defaults(func=predict_command)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
