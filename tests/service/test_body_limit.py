"""The body limit holds while a body streams: a chunked body (no Content-Length) over the limit is cut
off near the limit, not read to its end, in memory or on disk."""

from __future__ import annotations

import os
import select
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.service.conftest import Process, start_api

CHUNK = 64 * 1024
SENT_AT_MOST = 200 * 1024 * 1024  # what the client would send if nobody stopped it


@pytest.fixture(scope="module")
def small_api(service_tmp) -> Iterator[tuple[str, Process]]:
    """An embedded API whose body limit is 2 x 64 KiB x 4/3 + 1 MiB = 1.17 MB."""
    api, base = start_api(service_tmp, "api-small-body", max_upload_bytes="65536", max_images="2")
    yield base, api
    api.stop()


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def open_files(pid: int) -> set[str]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            found.add(os.readlink(fd))
        except OSError:
            continue
    return found


MULTIPART_HEAD = (
    b'--XAIBOUNDARY\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n'
    b"Content-Type: image/png\r\n\r\n"
)
JSON_HEAD = b'{"model": "lenet5-shapes", "methods": [{"name": "gradcam"}], "images": ["'


def send_until_answered(
    base: str, content_type: str, head: bytes, request_line: bytes = b"POST /explain"
) -> tuple[int, bytes]:
    """A request (``POST /explain`` unless told) with a chunked body that would go on for ``SENT_AT_MOST``
    bytes, stopping as soon as the server answers: (bytes of body sent by then, the answer's first bytes)."""
    url = httpx.URL(base)
    with socket.create_connection((url.host, url.port), timeout=30) as connection:
        connection.sendall(
            request_line
            + b" HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n"
            + f"Content-Type: {content_type}\r\n\r\n".encode()
        )
        sent, chunk = 0, head + b"A" * CHUNK
        while sent < SENT_AT_MOST:
            readable, _, _ = select.select([connection], [], [], 0)
            if readable:
                break
            try:
                connection.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:  # the server closed the connection while the body still came
                break
            sent += len(chunk)
            chunk = b"A" * CHUNK
        connection.settimeout(30)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < length_of(answer):
            more = connection.recv(65536)
            if not more:
                break
            answer += more
    return sent, answer


def length_of(answer: bytes) -> int:
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


@pytest.mark.parametrize(
    "content_type, head",
    [("application/json", JSON_HEAD), ("multipart/form-data; boundary=XAIBOUNDARY", MULTIPART_HEAD)],
)
def test_a_chunked_body_over_the_limit_is_cut_off_near_the_limit(small_api, content_type, head):
    base, api = small_api
    pid = api.process.pid
    temp_before = set(os.listdir(tempfile.gettempdir()))
    rss_before = rss_bytes(pid)
    sent, answer = send_until_answered(base, content_type, head)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"code":"payload_too_large"' in answer and b'"field":"body"' in answer
    # The limit is 1.17 MB; what the socket buffers hold on both sides comes on top of it.
    assert sent < 16 * 1024 * 1024, f"{sent} bytes were sent before the answer"
    growth = rss_bytes(pid) - rss_before
    assert growth < 20 * 1024 * 1024, f"the API grew by {growth / 1e6:.1f} MB"
    assert set(os.listdir(tempfile.gettempdir())) <= temp_before, "a temporary file stayed behind"
    spooled = [name for name in open_files(pid) if name.endswith("(deleted)")]  # an unlinked temporary file
    assert not spooled, spooled
    with httpx.Client(base_url=base, timeout=60) as http:
        assert http.get("/healthz").status_code == 200, "the API still answers"


@pytest.mark.parametrize(
    "request_line, status",
    [(b"GET /models", b"200"), (b"DELETE /jobs/" + b"0" * 32, b"404"), (b"GET /healthz", b"200")],
)
def test_a_route_that_takes_no_body_answers_without_reading_one(small_api, request_line, status):
    """Routes without a body (reads, cancellation, probes) never read one: a client streaming 200 MB at
    them is answered at once and the API does not grow."""
    base, api = small_api
    rss_before = rss_bytes(api.process.pid)
    sent, answer = send_until_answered(base, "application/octet-stream", b"", request_line)
    assert answer.startswith(b"HTTP/1.1 " + status), answer[:200]
    assert sent < 16 * 1024 * 1024, f"{sent} bytes were sent before the answer"
    growth = rss_bytes(api.process.pid) - rss_before
    assert growth < 20 * 1024 * 1024, f"the API grew by {growth / 1e6:.1f} MB"
