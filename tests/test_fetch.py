"""Downloads against a real HTTP server on loopback: good bytes, failures, truncation, retries."""
import hashlib
import http.server
import socket
import threading

import pytest

from mriseg.fetch import FetchError, fetch_archive

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class Handler(http.server.BaseHTTPRequestHandler):
    hits = {}

    def log_message(self, *args):
        pass

    def do_GET(self):
        Handler.hits[self.path] = Handler.hits.get(self.path, 0) + 1
        n = Handler.hits[self.path]
        if self.path == "/ok.zip" or (self.path == "/flaky.zip" and n >= 3):
            self._send(PAYLOAD)
        elif self.path == "/missing.zip":
            self.send_error(404)
        elif self.path in ("/broken.zip", "/flaky.zip"):
            self.send_error(500)
        elif self.path == "/truncated.zip":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[: len(PAYLOAD) // 3])
            self.wfile.flush()
            self.close_connection = True
        else:
            self.send_error(404)

    def _send(self, body):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(autouse=True)
def _reset_hits():
    Handler.hits.clear()


FAST = {"retries": 2, "backoff_s": 0.01}


def test_download_ok_with_checksum(server, tmp_path):
    dest = tmp_path / "data" / "archive.zip"
    fetch_archive(f"{server}/ok.zip", dest, sha256=hashlib.sha256(PAYLOAD).hexdigest(), **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert sorted(p.name for p in dest.parent.iterdir()) == ["archive.zip"]


def assert_fails_cleanly(source, dest, *words, sha256=None):
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(b"previous good archive")
    with pytest.raises(FetchError) as err:
        fetch_archive(source, dest, sha256=sha256, **FAST)
    msg = str(err.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg
    assert dest.read_bytes() == b"previous good archive"
    assert sorted(p.name for p in dest.parent.iterdir()) == [dest.name], "no temporary file left"
    return msg


def test_404_is_not_retried(server, tmp_path):
    assert_fails_cleanly(f"{server}/missing.zip", tmp_path / "a.zip", "missing.zip", "404")
    assert Handler.hits["/missing.zip"] == 1


def test_500_is_retried_then_fails(server, tmp_path):
    assert_fails_cleanly(f"{server}/broken.zip", tmp_path / "a.zip", "broken.zip", "500", "3 attempts")
    assert Handler.hits["/broken.zip"] == 3


def test_transient_500_recovers(server, tmp_path):
    fetch_archive(f"{server}/flaky.zip", tmp_path / "a.zip", **FAST)
    assert (tmp_path / "a.zip").read_bytes() == PAYLOAD
    assert Handler.hits["/flaky.zip"] == 3


def test_truncated_body_is_refused(server, tmp_path):
    assert_fails_cleanly(f"{server}/truncated.zip", tmp_path / "a.zip", "truncated.zip")
    assert Handler.hits["/truncated.zip"] == 3


def test_connection_refused(tmp_path):
    with socket.socket() as s:  # a port that was free a moment ago: nobody listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert_fails_cleanly(f"http://127.0.0.1:{port}/x.zip", tmp_path / "a.zip", f"127.0.0.1:{port}", "refused")


def test_checksum_mismatch(server, tmp_path):
    assert_fails_cleanly(f"{server}/ok.zip", tmp_path / "a.zip", "sha256 mismatch", sha256="0" * 64)


@pytest.mark.parametrize("url", ["ftp://example.com/MRIs.zip", "s3://bucket/MRIs.zip", "gopher://x/y"])
def test_unsupported_scheme(tmp_path, url):
    assert_fails_cleanly(url, tmp_path / "a.zip", url, "unsupported URL scheme")


def test_local_path_and_file_url(tmp_path):
    src = tmp_path / "my archive.zip"
    src.write_bytes(PAYLOAD)
    fetch_archive(str(src), tmp_path / "a.zip")
    assert (tmp_path / "a.zip").read_bytes() == PAYLOAD
    fetch_archive(src.as_uri(), tmp_path / "b.zip", sha256=hashlib.sha256(PAYLOAD).hexdigest())
    assert (tmp_path / "b.zip").read_bytes() == PAYLOAD


def test_missing_local_file(tmp_path):
    assert_fails_cleanly(str(tmp_path / "nope.zip"), tmp_path / "a.zip", "nope.zip", "no such")
