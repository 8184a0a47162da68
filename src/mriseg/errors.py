"""What mriseg raises for a problem a user can fix. Each message is one line naming the file or setting
and what is wrong; only cli.py and stages/ turn it into `<command>: error: ...` and an exit code."""


class MrisegError(Exception):
    """The base of every error a user can act on."""


class ParamsError(MrisegError):
    """A params.yaml value (or its CLI twin) the pipeline cannot use."""


class DeviceError(MrisegError):
    """The device asked for is not there."""


class DataError(MrisegError):
    """Prepared data (data/MRIs, data/manifest.csv) missing or not what a stage expects."""


def stage_error(stage, main, *args):
    """Run a stage's main(*args): its return value, or `<stage>: error: <one line>` for a MrisegError
    (sys.exit prints that and exits 1)."""
    try:
        return main(*args)
    except MrisegError as e:
        return f"{stage}: error: {e}"
