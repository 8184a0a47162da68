"""Get the MRI archive: build the embedded sample, download an http(s) URL, or copy a local zip.

Downloads stream to a temporary file with a progress bar, are checked against Content-Length and
the optional sha256, and are renamed into place only when complete. Transient failures (5xx,
connection reset or refused, truncated body) are retried with exponential backoff; 4xx are not.
"""
import hashlib
import http.client
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from .errors import MrisegError
from .io import atomic_path
from .sample import build_sample_archive

RETRIES = 4
BACKOFF_S = 1.0
TIMEOUT_S = 60
CHUNK = 1 << 20


class FetchError(MrisegError):
    """One line naming the source and what is wrong."""


class _Transient(Exception):
    pass


def sha256sum(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _download_once(url, tmp):
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as r, open(tmp, "wb") as f:
            expected = r.headers.get("Content-Length")
            expected = int(expected) if expected is not None else None
            got = 0
            with tqdm(total=expected, unit="B", unit_scale=True, desc=f"download {url}") as bar:
                while chunk := r.read(CHUNK):
                    f.write(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        if e.code >= 500:
            raise _Transient(f"HTTP {e.code} {e.reason}") from None
        raise FetchError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
        raise _Transient(f"{getattr(e, 'reason', e)}") from None
    except http.client.HTTPException as e:
        raise _Transient(f"connection closed early ({e})") from None
    if expected is not None and got != expected:
        raise _Transient(f"truncated: got {got} of {expected} bytes")


def download(url, path, retries=RETRIES, backoff_s=BACKOFF_S):
    """Download `url` into `path` (overwritten), retrying transient failures with backoff."""
    for attempt in range(retries + 1):
        try:
            return _download_once(url, path)
        except _Transient as e:
            if attempt == retries:
                raise FetchError(f"{url}: {e} (gave up after {retries + 1} attempts)") from None
            wait = backoff_s * 2**attempt
            print(f"{url}: {e}; retrying in {wait:g} s")
            time.sleep(wait)


def fetch_archive(source, dest, sha256=None, **download_kw):
    """Put the archive named by `source` (params data.archive) at `dest`; `dest` changes only on success."""
    source = str(source)
    parsed = urllib.parse.urlparse(source)
    scheme = parsed.scheme.lower()
    with atomic_path(dest) as tmp:
        if source == "sample":
            n = build_sample_archive(tmp)
            print(f"built the MNI152 sample archive: {n} labelled volumes")
        elif scheme in ("http", "https"):
            download(source, tmp, **download_kw)
        elif scheme in ("", "file"):
            path = Path(urllib.parse.unquote(parsed.path) if scheme == "file" else source)
            if not path.is_file():
                raise FetchError(f"{path}: no such archive file (params.yaml data.archive)")
            shutil.copyfile(path, tmp)
        else:
            raise FetchError(f"{source}: unsupported URL scheme {scheme!r} (use http, https, a file path or 'sample')")
        if sha256:
            got = sha256sum(tmp)
            if got != str(sha256).strip().lower():
                raise FetchError(f"{source}: sha256 mismatch: expected {sha256}, got {got}")
    print(f"fetched {source} -> {dest}")
