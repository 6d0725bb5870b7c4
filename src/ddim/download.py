"""Streamed, resumable, verified HTTP downloads (standard library only).

`fetch(url, part, md5)` appends to `part` (a `.part` file that a stopped transfer leaves behind,
resumed with an HTTP Range request), shows a progress bar, and checks the whole file's MD5 before
returning. Every failure is a `DownloadError` of one line that says what to do:

- unreachable host, HTTP error (404, …): nothing is written; an empty `.part` is removed;
- a stall (no byte for `timeout` seconds) or a truncated transfer (the server closed before the
  announced length): the bytes received stay in `part`, and fetching again resumes there;
- a wrong checksum: `part` is deleted (its bytes are not the published file).

The caller moves the verified file to its final name; nothing here writes that name.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

CHUNK = 1 << 20  # bytes per read
DEFAULT_TIMEOUT = 15.0  # seconds without a byte (or to connect) before giving up; $DDIM_DOWNLOAD_TIMEOUT


class DownloadError(OSError):
    """A download that failed: the message names the URL, what happened and what to do."""


def timeout_from_env() -> float:
    """$DDIM_DOWNLOAD_TIMEOUT (seconds, > 0), else DEFAULT_TIMEOUT."""
    text = os.environ.get("DDIM_DOWNLOAD_TIMEOUT")
    if text is None:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"DDIM_DOWNLOAD_TIMEOUT must be a number of seconds > 0, got {text!r}")
    return value


def md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(
    url: str, part: Path, md5: str, *, timeout: float | None = None, progress: bool | None = None
) -> Path:
    """Download `url` into `part` (resuming what it holds) and check its MD5. Returns `part`.

    progress: show a bar on stderr (None: when stderr is a terminal).
    """
    timeout = timeout_from_env() if timeout is None else timeout
    offset = part.stat().st_size if part.is_file() else 0
    with _open(url, offset, timeout, part) as (response, offset):
        total = _total_length(response, offset)
        part.parent.mkdir(parents=True, exist_ok=True)
        with open(part, "r+b" if offset else "wb") as f:
            f.truncate(offset)
            f.seek(offset)
            _copy(response, f, url, part, offset, total, timeout, progress)
    got = md5_of(part)
    if got != md5:
        part.unlink()
        raise DownloadError(
            f"{url}: checksum mismatch (MD5 {got}, published {md5}): not the published file, deleted; "
            "try again later, or from another mirror (DDIM_MIRROR)"
        )
    return part


@contextmanager
def _open(
    url: str, offset: int, timeout: float, part: Path
) -> Iterator[tuple[http.client.HTTPResponse, int]]:
    """The response to GET `url`, from byte `offset` on (Range) when it is > 0, and the offset
    the body starts at: 0 when the server sends the whole file instead."""
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and offset:  # the part is already as long as the file, or longer: start over
            with _from_start(url, timeout, part) as opened:
                yield opened
            return
        _drop_if_empty(part)
        raise DownloadError(
            f"{url}: HTTP {e.code} {e.reason}; check the name, or the mirror (DDIM_MIRROR)"
        ) from None
    except (urllib.error.URLError, OSError) as e:
        _drop_if_empty(part)
        reason = getattr(e, "reason", e)
        if isinstance(reason, TimeoutError | socket.timeout):
            reason = f"no answer within {timeout:g} s"
        raise DownloadError(f"cannot reach {url} ({reason}); check the network connection") from None
    with response:
        if offset and response.status == 206 and _range_start(response) != offset:  # not the range asked
            response.close()
            with _from_start(url, timeout, part) as opened:
                yield opened
            return
        if offset and response.status != 206:
            offset = 0  # the server ignored the Range request: it sends the whole file
        yield response, offset


def _from_start(
    url: str, timeout: float, part: Path
) -> AbstractContextManager[tuple[http.client.HTTPResponse, int]]:
    """Discard the part and ask for the whole file."""
    part.unlink()
    return _open(url, 0, timeout, part)


def _range_start(response: http.client.HTTPResponse) -> int | None:
    m = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(m[1]) if m else None


def _total_length(response: http.client.HTTPResponse, offset: int) -> int | None:
    length = response.headers.get("Content-Length")
    return offset + int(length) if length is not None and length.isdigit() else None


def _copy(
    response: http.client.HTTPResponse,
    f: BinaryIO,
    url: str,
    part: Path,
    done: int,
    total: int | None,
    timeout: float,
    progress: bool | None,
) -> None:
    disable = None if progress is None else not progress  # None: tqdm shows it on a terminal only
    bar = tqdm(total=total, initial=done, unit="B", unit_scale=True, unit_divisor=1024,
               desc=part.name.removesuffix(".part"), disable=disable, file=sys.stderr)  # fmt: skip
    with bar:
        try:
            while chunk := response.read1(CHUNK):
                f.write(chunk)
                done += len(chunk)
                bar.update(len(chunk))
        except TimeoutError:
            f.flush()
            raise DownloadError(
                f"{url}: the server stalled (no data for {timeout:g} s) at {done:,} of "
                f"{_of(total)} bytes; run the same command again to resume ({part} is kept)"
            ) from None
        except (http.client.HTTPException, ConnectionError) as e:
            f.flush()
            raise DownloadError(
                f"{url}: the transfer broke off ({type(e).__name__}) at {done:,} of {_of(total)} bytes; "
                f"run the same command again to resume ({part} is kept)"
            ) from None
    if total is not None and done < total:
        raise DownloadError(
            f"{url}: the transfer ended early, at {done:,} of {total:,} bytes; run the same command "
            f"again to resume ({part} is kept)"
        )


def _of(total: int | None) -> str:
    return "?" if total is None else f"{total:,}"


def _drop_if_empty(part: Path) -> None:
    if part.is_file() and part.stat().st_size == 0:
        part.unlink()
