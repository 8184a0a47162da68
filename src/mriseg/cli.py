"""The `mriseg` command line: segment new scans, follow subjects over sessions, score a model on an archive,
turn labelled volumes into a training archive, and compare DVC experiments."""
import argparse
import sys

from .errors import MrisegError


def part_of(text):
    """'K/N' -> (K, N), 1 <= K <= N."""
    k, sep, n = text.partition("/")
    if not (sep and k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n)):
        raise argparse.ArgumentTypeError(f"{text}: expected K/N with 1 <= K <= N, e.g. 2/8")
    return int(k), int(n)


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be at least 1")
    return value


def predict_command(args):
    from tqdm import tqdm

    from .models import SHIPPED_MODEL
    from .inputs import InputError
    from .parts import merge_parts
    from .segment import predict_files

    log = lambda m: tqdm.write(m, file=sys.stderr)
    pixel = [float(v) for v in args.pixel_size.split(",")] if args.pixel_size else None
    if args.merge:
        if args.inputs:
            raise InputError("--merge takes no INPUT: it joins the part files already in --out")
        merge_parts(args.out, log=log)
        return 0
    failed = predict_files(args.model or SHIPPED_MODEL, args.out, args.inputs, device=args.device,
                           batch_size=args.batch_size, pixel_size=pixel, slice_thickness=args.slice_thickness,
                           labels=args.labels, part=args.part, skull_strip=args.skull_strip,
                           csf_border=args.csf_border, log=log)
    return 1 if failed else 0


def longitudinal_command(args):
    from tqdm import tqdm

    from .longitudinal import longitudinal
    from .models import SHIPPED_MODEL

    log = lambda m: tqdm.write(m, file=sys.stderr)
    done = longitudinal(args.model or SHIPPED_MODEL, args.bids, args.out, device=args.device,
                        batch_size=args.batch_size, skull_strip=args.skull_strip, dates_csv=args.dates,
                        csf_border=args.csf_border, log=log)
    return 0 if done else 1


def make_archive_command(args):
    from .labels import SourceError
    from .make_archive import make_archive
    from .models import load_checkpoint

    axis, pixel_size = args.axis or "auto", 1.0 if args.pixel_size is None else args.pixel_size
    if args.like:
        ckpt = load_checkpoint(args.like)[1]
        recorded = ckpt.get("pixel_size_mm")
        if args.axis or (args.pixel_size is not None and recorded):
            raise SourceError(f"--like {args.like} takes the plane and pixel size from the model: "
                              "drop --axis/--pixel-size")
        axis, pixel_size = ckpt["axis"], recorded[0] if recorded else pixel_size
        if not recorded:  # trained on an archive without MRIs/mriseg.json, such as the tutorial's
            print(f"make-archive: note: {args.like} records no pixel size; using {pixel_size or 'the voxels'}"
                  f"{' mm' if pixel_size else ''} (--pixel-size)", file=sys.stderr)
    n_subjects, n_slices = make_archive(args.src, args.out, labels=args.labels, axis=axis,
                                        pixel_size=pixel_size, min_tissue=args.min_tissue)
    print(f"{n_subjects} subjects, {n_slices} slices -> {args.out} (use it with data.archive: {args.out})")
    return 0


def evaluate_command(args):
    from .held_out import evaluate_archive, format_table
    from .io import write_json

    log = lambda m: print(m, file=sys.stderr)
    result = evaluate_archive(args.model, args.archive, device=args.device, batch_size=args.batch_size,
                              labels=args.labels, skull_strip=args.skull_strip, csf_border=args.csf_border, log=log)
    print(format_table(result))
    if args.out:
        try:
            write_json(args.out, result)
        except OSError as e:
            print(f"evaluate: error: {args.out}: cannot write ({e.strerror})", file=sys.stderr)
            return 2
    return 0


def compare_command(args):
    from .experiments import (compare, dvc_exp_show, finished_experiments, markdown, plot, read_saved_show, report,
                              select, split_views)
    from .io import atomic_path

    show = read_saved_show(args.json) if args.json else dvc_exp_show(args.all_commits)
    rows = select(finished_experiments(show), args.where)
    result = compare(split_views(rows) if args.views else rows, metrics=args.metrics.split(","),
                     baseline=args.baseline)
    print(markdown(result))
    if args.out:
        with atomic_path(f"{args.out}.md") as tmp:
            tmp.write_text(report(result))
        plot(result, f"{args.out}.png")
        print(f"-> {args.out}.md, {args.out}.png", file=sys.stderr)
    return 0


def main(argv=None):
    from .labels import CSF_BORDERS

    parser = argparse.ArgumentParser(prog="mriseg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="segment .npy slices or NIfTI/MGZ volumes, and measure tissue volumes")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help=".npy slices, folders of them, .nii/.nii.gz/.mgz "
                   "volumes, FreeSurfer subjects, a BIDS dataset (its sub-*/[ses-*/]anat/*_T1w.nii[.gz])")
    p.add_argument("--model", help="a bundle or checkpoint the pipeline trained (models/model.pt, "
                   "models/views/<view>.pt); default: the shipped three-view model (skull-stripped adult T1; "
                   "see mriseg/shipped/MODEL.md)")
    p.add_argument("--out", required=True, help="folder for masks, overlay PNGs and volumes.csv")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--pixel-size", help="mm per pixel of .npy slices: one value or ROW,COL (gives areas)")
    p.add_argument("--slice-thickness", type=float, default=1.0, help="mm, for the ml columns of .npy slices")
    p.add_argument("--labels", help="score volumes against their manual labels (make-archive's pairing: "
                   "<subject>_seg.nii.gz, FreeSurfer mri/aseg.mgz, FSL _pve_0/1/2) mapped with this preset or map; "
                   "adds manual ml and Dice per tissue to volumes.csv")
    p.add_argument("--part", type=part_of, metavar="K/N", help="segment only the K-th of N shares of the inputs "
                   "(a job array: every N-th input from the K-th, in sorted order) into volumes.part-K-of-N.csv; "
                   "under torchrun each process takes its share and rank 0 writes volumes.csv")
    p.add_argument("--skull-strip", choices=["auto", "yes", "no"], default="auto",
                   help="extract the brain before segmenting (whole-head scans): auto (default) does so for each "
                   "volume not extracted already and says which in volumes.csv; writes <stem>_brainmask")
    p.add_argument("--merge", action="store_true", help="join the part files in --out into volumes.csv, "
                   "in input order, once every part has run")
    p.add_argument("--csf-border", choices=CSF_BORDERS, default="network",
                   help="the gray matter / CSF border: network (default: the views' own), intensity (of their gray "
                   "matter, what is darker than halfway to the scan's pure CSF becomes CSF: nearer FreeSurfer's "
                   "gray matter, less repeatable on noisy scans; docs/tissue.md)")
    p.set_defaults(func=predict_command)

    e = sub.add_parser("evaluate", help="score a model on every subject of an archive (e.g. subjects it never saw): "
                       "the evaluate stage's IoU and Dice, overall and per subject")
    e.add_argument("archive", help="a zip of labelled volumes (scored per subject in 3-D), or of slices in the "
                   "tutorial's layout, such as one made by make-archive")
    e.add_argument("--labels", default="ibsr", help="label preset or map of a zip of volumes (as data.labels)")
    e.add_argument("--model", default="models/model.pt", help="checkpoint written by the train stage")
    e.add_argument("--skull-strip", choices=["auto", "yes", "no"], default="auto",
                   help="for a zip of volumes, extract each head's brain before scoring, as predict does: auto "
                   "(default) for each volume not extracted already; says which, and records it per subject")
    e.add_argument("--out", help="also write the scores to this JSON file")
    e.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    e.add_argument("--batch-size", type=positive_int, default=32,
                   help="slices per batch; the tutorial's IoU is a mean over batches (the evaluate stage uses 32)")
    e.add_argument("--csf-border", choices=CSF_BORDERS, default="network",
                   help="the gray matter / CSF border: network (default: the views' own), intensity (of their gray "
                   "matter, what is darker than halfway to the scan's pure CSF becomes CSF: nearer FreeSurfer's "
                   "gray matter, less repeatable on noisy scans; docs/tissue.md)")
    e.set_defaults(func=evaluate_command)

    g = sub.add_parser("longitudinal", help="follow each subject of a BIDS dataset over its sessions: segmented in "
                       "one space and one brain mask; volumes.csv, change.csv (per pair of sessions, per year where "
                       "dated), change.png")
    g.add_argument("bids", help="a BIDS dataset: sub-<id>/ses-<label>/anat/*_T1w.nii[.gz]")
    g.add_argument("--out", required=True, help="folder for volumes.csv, change.csv, change.png and sub-<id>/ masks")
    g.add_argument("--model", help="a bundle or checkpoint (default: the shipped three-view model)")
    g.add_argument("--dates", help="CSV of subject,session,date (YYYY-MM-DD) for sessions whose "
                   "sub-<id>_sessions.tsv gives no acq_time")
    g.add_argument("--skull-strip", choices=["auto", "yes", "no"], default="auto",
                   help="as predict's, decided once per subject on the mean of its sessions")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    g.add_argument("--batch-size", type=positive_int, default=32)
    g.add_argument("--csf-border", choices=CSF_BORDERS, default="network",
                   help="the gray matter / CSF border: network (default: the views' own), intensity (of their gray "
                   "matter, what is darker than halfway to the scan's pure CSF becomes CSF: nearer FreeSurfer's "
                   "gray matter, less repeatable on noisy scans; docs/tissue.md)")
    g.set_defaults(func=longitudinal_command)

    m = sub.add_parser("make-archive", help="labelled NIfTI/MGZ volumes -> a zip in the tutorial's layout")
    m.add_argument("src", help="folder of <subject>.nii.gz + <subject>_seg.nii.gz, or FreeSurfer subject folders")
    m.add_argument("--out", required=True, help="the zip to write")
    m.add_argument("--labels", default="ibsr",
                   help="ibsr | freesurfer-aseg | fsl-fast | an explicit map like '3:0,2:1' (0 WM, 1 GM, the rest, CSF too, background)")
    m.add_argument("--axis", choices=["auto", "axial", "coronal", "sagittal"],
                   help="slicing plane; auto (default): across the thickest voxels (the acquisition plane), "
                   "axial if isotropic")
    m.add_argument("--pixel-size", type=float, help="in-plane mm after resampling (default 1; 0: keep voxels)")
    m.add_argument("--like", metavar="MODEL", help="slice as this checkpoint was trained (its plane and pixel size), "
                   "e.g. to score it on these subjects with `mriseg evaluate`")
    m.add_argument("--min-tissue", type=int, default=100, help="keep slices with at least this many tissue pixels")
    m.set_defaults(func=make_archive_command)

    c = sub.add_parser("compare", help="compare DVC experiments (e.g. a cross-validation queued with dvc exp run "
                       "--queue): per-run scores, mean ± sd per group of params, paired gains per fold and seed")
    c.add_argument("--metrics", default="dice_white_matter,dice_gray_matter",
                   help="keys of reports/metrics.json, comma-separated")
    c.add_argument("--baseline", help="the group the others are paired against (as printed; default: the first)")
    c.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                   help="only experiments with this param value (repeatable), e.g. --where train.epochs=30")
    c.add_argument("--views", action="store_true", help="also score each view alone (views.<view> of "
                   "reports/metrics.json) as its own group, paired with the aggregate of the same run: "
                   "--views --baseline 'scored=coronal alone'")
    c.add_argument("--all-commits", action="store_true", help="experiments of every commit, not only HEAD's")
    c.add_argument("--json", help="read this saved `dvc exp show --json` instead of running it here")
    c.add_argument("--out", metavar="PREFIX", help="also write PREFIX.md (tables, commits, params, device, torch) "
                   "and PREFIX.png (scores per fold and seed)")
    c.set_defaults(func=compare_command)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except MrisegError as e:  # a bad model, option or setting: nothing was written
        print(f"{args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
