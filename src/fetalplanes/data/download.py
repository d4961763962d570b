"""Download FETAL_PLANES_DB from Zenodo: resumable, checksum-verified, extracted atomically.

Source: Zenodo record 3904280, "FETAL_PLANES_DB: Common maternal-fetal ultrasound images"
(Burgos-Artizzu X.P. et al., "Evaluation of deep convolutional neural networks for automatic
classification of common maternal fetal ultrasound planes", Sci Rep 10, 10200 (2020),
doi:10.1038/s41598-020-67076-5). Licence: Creative Commons Attribution 4.0 (CC BY 4.0);
cite the paper and the record when you use the data.

Only the standard library (``urllib``) is used for HTTP, plus ``rich`` for the progress bar.
This needs network access to zenodo.org and therefore cannot run offline. To use a local
mirror, serve a JSON document shaped like Zenodo's record API at ``{api}/{record}`` (with
``files[].links.self`` pointing at your copies) and pass ``api="http://mirror/api/records"``;
or download the zip by hand and call :func:`extract_archive` on it.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import struct
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

from fetalplanes.core.errors import UserError
from fetalplanes.core.limits import LIMITS

__all__ = [
    "ZENODO_RECORD", "ZENODO_API", "CSV_NAME", "IMAGES_DIR", "DownloadError", "RemoteFile",
    "fetch_record", "download_file", "extract_archive", "download_fetal_planes",
]

logger = logging.getLogger(__name__)

ZENODO_RECORD = "3904280"
ZENODO_API = "https://zenodo.org/api/records"
CSV_NAME = "FETAL_PLANES_DB_data.csv"
IMAGES_DIR = "Images"
CACHE_DIR_NAME = ".fetalplanes-download"
CITATION = (
    "Burgos-Artizzu X.P. et al. Evaluation of deep convolutional neural networks for automatic "
    "classification of common maternal fetal ultrasound planes. Sci Rep 10, 10200 (2020). "
    "doi:10.1038/s41598-020-67076-5; data: doi:10.5281/zenodo.3904280"
)
LICENCE = "CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/)"
BACKOFF_BASE_S = 1.0  # first retry waits this long, then doubles (capped at 30 s)
_USER_AGENT = "fetalplanes-downloader/1 (+python-urllib)"
_RETRYABLE = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)


class DownloadError(UserError, RuntimeError):
    """Fetching, verifying or unpacking the dataset failed; the message says what to do."""


class _Truncated(ConnectionError):
    """The server closed the stream before sending every byte it announced."""


@dataclass
class RemoteFile:
    key: str
    url: str
    size: int | None
    checksum: str | None  # "md5:<hex>", as Zenodo gives it


def _request(url: str, headers: dict[str, str] | None = None) -> urllib.request.Request:
    if not url.lower().startswith(("http://", "https://")):
        raise DownloadError(f"refusing non-HTTP(S) URL {url!r}")
    return urllib.request.Request(url, headers={"User-Agent": _USER_AGENT, **(headers or {})})


def fetch_record(record: str = ZENODO_RECORD, api: str = ZENODO_API, timeout: float = 30) -> list[RemoteFile]:
    """List the files of a Zenodo record (``GET {api}/{record}``)."""
    url = f"{api.rstrip('/')}/{record}"
    try:
        with urllib.request.urlopen(_request(url, {"Accept": "application/json"}), timeout=timeout) as resp:
            data = json.loads(resp.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"GET {url} failed: HTTP {exc.code} {exc.reason}; check the record id and API URL") from exc
    except (*_RETRYABLE, OSError) as exc:
        raise DownloadError(f"cannot reach {url}: {exc}; this needs network access (or pass api= a local mirror)") from exc
    except ValueError as exc:
        raise DownloadError(f"{url} did not return valid JSON: {exc}") from exc
    files = _parse_files(data)
    if not files:
        raise DownloadError(f"record {record} at {url} lists no files")
    return files


def _parse_files(data: object) -> list[RemoteFile]:
    entries = data.get("files", data.get("entries", [])) if isinstance(data, dict) else []
    if isinstance(entries, dict):  # InvenioRDM "/files" shape: {"entries": [...]}
        entries = entries.get("entries", [])
    out = []
    for item in entries if isinstance(entries, list) else []:
        links = item.get("links") or {}
        url = links.get("self") or links.get("content") or links.get("download")
        key = item.get("key") or item.get("filename")
        if not key or not url:
            continue
        size = item.get("size", item.get("filesize"))
        checksum = item.get("checksum")
        out.append(RemoteFile(str(key), str(url), int(size) if size is not None else None,
                              str(checksum) if checksum else None))
    return out


def _file_digest(path: Path, checksum: str) -> tuple[str, str]:
    algo, _, expected = checksum.partition(":")
    if not expected:  # a bare hex digest: assume md5, as Zenodo uses
        algo, expected = "md5", algo
    try:
        h = hashlib.new(algo.lower())
    except ValueError as exc:
        raise DownloadError(f"unsupported checksum algorithm {algo!r} in {checksum!r}") from exc
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return expected.lower(), h.hexdigest()


def _is_complete(path: Path, remote: RemoteFile) -> bool:
    if not path.is_file() or (remote.size is not None and path.stat().st_size != remote.size):
        return False
    if remote.checksum is None:
        return remote.size is not None
    expected, got = _file_digest(path, remote.checksum)
    return expected == got


def _progress_bar(enabled: bool) -> Progress:
    return Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), TimeRemainingColumn(), disable=not enabled)


def _stream(remote: RemoteFile, part: Path, timeout: float, chunk: int, bar: Progress, task: int) -> None:
    """One HTTP attempt: append to ``part`` from its current size (Range), or restart at 0."""
    offset = part.stat().st_size if part.exists() else 0
    if remote.size is not None and offset > remote.size:
        logger.warning("%s is larger than the remote file; restarting from zero", part)
        part.unlink()
        offset = 0
    if remote.size is not None and offset == remote.size:
        return  # already all there; verification decides
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        resp = urllib.request.urlopen(_request(remote.url, headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # range not satisfiable: our .part is stale
            part.unlink()
            raise _Truncated(f"server rejected Range bytes={offset}-; restarting from zero") from exc
        if exc.code in (408, 429) or exc.code >= 500:
            raise
        raise DownloadError(f"GET {remote.url} failed: HTTP {exc.code} {exc.reason}") from exc
    with resp:
        if resp.status == 206 and _range_start(resp.headers.get("Content-Range")) != offset:
            part.unlink(missing_ok=True)
            raise _Truncated(f"server answered Range bytes={offset}- with {resp.headers.get('Content-Range')!r}")
        if resp.status != 206 and offset:
            logger.info("server ignored Range bytes=%d- (HTTP %d); restarting from zero", offset, resp.status)
            offset = 0
        announced = resp.headers.get("Content-Length")
        bar.update(task, completed=offset)
        written = 0
        with open(part, "ab" if offset else "wb") as fh:
            while block := resp.read1(chunk):
                fh.write(block)
                written += len(block)
                bar.advance(task, len(block))
    if announced is not None and written < int(announced):
        raise _Truncated(f"connection closed after {written} of {announced} bytes")
    if remote.size is not None and offset + written < remote.size:
        raise _Truncated(f"got {offset + written} of {remote.size} bytes")


def _range_start(content_range: str | None) -> int:
    match = re.match(r"\s*bytes\s+(\d+)-", content_range or "")
    return int(match.group(1)) if match else -1


def download_file(remote: RemoteFile, dest: Path, *, progress: bool = True, timeout: float = 60,
                  retries: int = 3, chunk: int = 1 << 20) -> Path:
    """Stream ``remote`` to ``dest`` via ``dest.part``, resuming and retrying; verify, then rename."""
    dest = Path(dest)
    if _is_complete(dest, remote):
        logger.info("%s already downloaded and verified; skipping", dest)
        return dest
    if dest.exists():
        logger.warning("%s exists but does not match %s; downloading it again", dest, remote.checksum or "the size")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    with _progress_bar(progress) as bar:
        task = bar.add_task(remote.key, total=remote.size)
        for attempt in range(retries + 1):
            try:
                _stream(remote, part, timeout, chunk, bar, task)
                break
            except _RETRYABLE as exc:
                if attempt == retries:
                    raise DownloadError(
                        f"downloading {remote.url} failed after {retries + 1} attempts: {exc}; "
                        f"the partial file {part} is kept, run again to resume") from exc
                wait = min(BACKOFF_BASE_S * 2**attempt, 30.0)
                logger.warning("download of %s interrupted (%s); resuming in %.1f s", remote.key, exc, wait)
                time.sleep(wait)
    _verify(remote, part)
    os.replace(part, dest)
    logger.info("downloaded %s -> %s", remote.url, dest)
    return dest


def _verify(remote: RemoteFile, part: Path) -> None:
    got_size = part.stat().st_size if part.exists() else 0
    if remote.size is not None and got_size != remote.size:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{remote.url}: expected {remote.size} bytes, got {got_size}; "
                            "the partial file was deleted, run again to restart")
    if remote.checksum is None:
        logger.warning("no checksum published for %s; size-only verification", remote.key)
        return
    expected, got = _file_digest(part, remote.checksum)
    if expected != got:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{remote.url}: checksum mismatch, expected {remote.checksum}, got {got}; "
                            "the corrupt download was deleted, run again (or check your mirror)")


def _check_members(zf: zipfile.ZipFile, archive: Path) -> None:
    for name in zf.namelist():
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
            raise DownloadError(f"{archive}: unsafe member path {name!r} (absolute or '..'); refusing to extract")


_LOCAL_HEADER = struct.Struct("<4s22xHH")  # PKWARE APPNOTE 4.3.7: signature ... name length, extra length
_SMALL_ENTRY = 1 << 20  # entries below 1 MiB cannot be bombs, whatever their ratio


def _check_sizes(zf: zipfile.ZipFile, archive: Path) -> None:
    """Refuse a zip bomb from its directory, before anything is extracted, whatever Python's patch
    level (CPython added an overlap check only in 3.12 / 3.11.x security releases): too many entries,
    a declared total above ``LIMITS.archive_total_bytes``, an entry whose declared ratio exceeds
    ``LIMITS.archive_ratio``, or entries whose data overlap (the "quoted-overlap" bomb)."""
    infos = zf.infolist()
    if len(infos) > LIMITS.archive_members:
        raise DownloadError(f"{archive}: {len(infos):,} entries; at most {LIMITS.archive_members:,} (archive_members); "
                            "refusing to extract")
    total = sum(i.file_size for i in infos)
    if total > LIMITS.archive_total_bytes:
        raise DownloadError(f"{archive}: entries declare {total:,} bytes in all; at most {LIMITS.archive_total_bytes:,} "
                            "(archive_total_bytes); refusing to extract")
    for info in infos:
        ratio = info.file_size / max(1, info.compress_size)
        if info.file_size > _SMALL_ENTRY and ratio > LIMITS.archive_ratio:
            raise DownloadError(f"{archive}: entry {info.filename!r} declares {info.file_size:,} bytes from "
                                f"{info.compress_size:,} (ratio {ratio:,.0f}); at most {LIMITS.archive_ratio} "
                                "(archive_ratio); refusing to extract")
    _check_overlap(zf, infos, archive)


def _check_overlap(zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo], archive: Path) -> None:
    fp = zf.fp
    assert fp is not None
    end_prev, prev = 0, None
    for info in sorted(infos, key=lambda i: i.header_offset):
        if info.header_offset < end_prev:
            raise DownloadError(f"{archive}: entry {info.filename!r} overlaps entry {prev!r} (a zip bomb: entries "
                                "sharing compressed data); refusing to extract")
        fp.seek(info.header_offset)
        header = fp.read(_LOCAL_HEADER.size)
        if len(header) < _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
            raise DownloadError(f"{archive}: entry {info.filename!r} has no local header at offset "
                                f"{info.header_offset:,}; the archive is damaged, delete it and download again")
        name_len, extra_len = _LOCAL_HEADER.unpack(header)[1:]
        end_prev, prev = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len + info.compress_size, info.filename


def _find_root(top: Path) -> Path | None:
    for cand in [top, *sorted(p for p in top.iterdir() if p.is_dir())]:
        if (cand / CSV_NAME).is_file() and (cand / IMAGES_DIR).is_dir():
            return cand
    return None


def _missing(top: Path) -> str:
    dirs = [top, *(p for p in top.iterdir() if p.is_dir())]
    if not any((d / CSV_NAME).is_file() for d in dirs):
        return f"{CSV_NAME} (at the top level or one folder down)"
    return f"an {IMAGES_DIR}/ folder next to {CSV_NAME}"


def extract_archive(archive: Path, out_dir: Path, *, overwrite: bool = False) -> Path:
    """Unpack the dataset zip into ``out_dir`` atomically; return ``out_dir`` (the dataset root)."""
    archive, out_dir = Path(archive), Path(out_dir).absolute()
    if out_dir.exists() and not overwrite and (not out_dir.is_dir() or any(out_dir.iterdir())):
        what = "a dataset" if (out_dir / CSV_NAME).exists() else "files"
        raise DownloadError(f"{out_dir} already exists and holds {what}; pass overwrite=True to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".fetalplanes-extract-", dir=out_dir.parent))
    try:
        try:
            with zipfile.ZipFile(archive) as zf:
                _check_members(zf, archive)
                _check_sizes(zf, archive)  # every refusal happens before the first byte is extracted
                zf.extractall(tmp)
        except DownloadError:  # our own refusals (bombs, unsafe paths) are already one clear line
            raise
        # zipfile lets the decompressors' errors through on damaged data (zlib.error, EOFError,
        # NotImplementedError for an unknown method, RuntimeError for encryption, ValueError).
        except (zipfile.BadZipFile, OSError, zlib.error, EOFError, NotImplementedError, RuntimeError, ValueError) as exc:
            raise DownloadError(f"cannot unpack {archive}: {type(exc).__name__}: {exc}; delete it and download again") from exc
        root = _find_root(tmp)
        if root is None:
            raise DownloadError(f"{archive} is not FETAL_PLANES_DB: missing {_missing(tmp)}")
        _replace_dir(root, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n_images = sum(1 for _ in (out_dir / IMAGES_DIR).iterdir())
    logger.info("extracted %s -> %s (%d images)", archive, out_dir, n_images)
    return out_dir


def _replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` onto ``dst``; an existing ``dst`` is swapped out first and removed only after."""
    if not dst.exists():
        os.replace(src, dst)
        return
    old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
    os.replace(dst, old)
    try:
        os.replace(src, dst)
    except OSError:
        os.replace(old, dst)
        raise
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink()


def _pick_archive(files: list[RemoteFile]) -> RemoteFile:
    zips = [f for f in files if f.key.lower().endswith(".zip")]
    if not zips:
        raise DownloadError(f"no .zip among the record's files: {[f.key for f in files]}")
    fetal = [f for f in zips if "FETAL" in f.key.upper()]
    return max(fetal or zips, key=lambda f: f.size or 0)


def download_fetal_planes(out_dir: str | os.PathLike[str], *, record: str = ZENODO_RECORD, api: str = ZENODO_API,
                          keep_archive: bool = False, progress: bool = True, overwrite: bool = False) -> Path:
    """Download and unpack FETAL_PLANES_DB into ``out_dir``; return the dataset root.

    An ``out_dir`` that already holds the dataset is returned as is unless ``overwrite``.
    The zip is cached (and resumed) in ``out_dir.parent / ".fetalplanes-download"``.
    """
    out_dir = Path(out_dir).expanduser().absolute()
    if (out_dir / CSV_NAME).is_file() and (out_dir / IMAGES_DIR).is_dir() and not overwrite:
        logger.info("FETAL_PLANES_DB already present at %s; pass overwrite=True to re-download", out_dir)
        return out_dir
    logger.info("FETAL_PLANES_DB, licence %s. Please cite: %s", LICENCE, CITATION)
    remote = _pick_archive(fetch_record(record, api))
    cache = out_dir.parent / CACHE_DIR_NAME
    archive = download_file(remote, cache / PurePosixPath(remote.key).name, progress=progress)
    root = extract_archive(archive, out_dir, overwrite=overwrite)
    if not keep_archive:
        archive.unlink(missing_ok=True)
        try:
            cache.rmdir()
        except OSError:
            pass  # other files are cached there
    return root
