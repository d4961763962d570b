"""A throwaway Orthanc PACS on loopback: for the node's tests, its benchmark, and trying it out.

:class:`LocalOrthanc` writes a config (HTTP on 127.0.0.1 only, DICOMweb plugin on, storage in
a folder of the caller's), starts Debian's ``Orthanc`` binary, waits for ``GET /system``, and stops
it by its process id. Orthanc 1.10 binds its DICOM port on *every* interface and has no option
to bind one address: run it only inside a network namespace with nothing but loopback
(``unshare -n``; see :func:`in_private_network`), as the tests and the benchmark do.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["LocalOrthanc", "PLUGIN_DIRS", "free_port", "in_private_network", "orthanc_binary", "plugin_path"]

PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc")


def orthanc_binary() -> str | None:
    return shutil.which("Orthanc") or next((p for p in ("/usr/sbin/Orthanc",) if os.access(p, os.X_OK)), None)


def plugin_path() -> str | None:
    for d in PLUGIN_DIRS:
        for name in ("libOrthancDicomWeb.so",):
            if Path(d, name).is_file():
                return str(Path(d, name))
        hits = sorted(Path(d).glob("libOrthancDicomWeb.so*")) if Path(d).is_dir() else []
        if hits:
            return str(hits[0])
    return None


def in_private_network() -> bool:
    """True when this process's only network interfaces are loopback (e.g. inside ``unshare -n``)."""
    names = [n for _, n in socket.if_nameindex()]
    return all(n == "lo" for n in names)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalOrthanc:
    """Orthanc in ``folder`` with free ports; ``modalities`` maps a name to (AET, host, port)."""

    folder: Path
    http_port: int = field(default_factory=free_port)
    dicom_port: int = field(default_factory=free_port)
    aet: str = "ORTHANC"
    modalities: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def config(self) -> dict[str, Any]:
        plugin = plugin_path()
        return {
            "Name": "fetalplanes-test", "StorageDirectory": str(self.folder / "db"),
            "IndexDirectory": str(self.folder / "db"), "HttpPort": self.http_port, "DicomPort": self.dicom_port,
            "DicomAet": self.aet, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "DicomAlwaysAllowStore": True, "DicomCheckCalledAet": False,
            "DicomModalities": {k: list(v) for k, v in self.modalities.items()},
            "Plugins": [plugin] if plugin else [], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "StableAge": 1,
        }

    def start(self, timeout: float = 30.0) -> LocalOrthanc:
        """Start Orthanc and wait until ``/system`` answers; RuntimeError (with its log tail) if not.
        Refuses to start outside a loopback-only network (see module docstring)."""
        binary = orthanc_binary()
        if binary is None:
            raise RuntimeError("Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)")
        if not in_private_network():
            raise RuntimeError("Orthanc binds its DICOM port on every interface: start it inside `unshare -n` "
                               "(loopback only)")
        self.folder.mkdir(parents=True, exist_ok=True)
        cfg = self.folder / "orthanc.json"
        cfg.write_text(json.dumps(self.config(), indent=1))
        log = open(self.folder / "orthanc.log", "ab")
        self.process = subprocess.Popen([binary, str(cfg)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.url}/system", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        tail = (self.folder / "orthanc.log").read_text(errors="replace")[-1500:]
        self.stop()
        raise RuntimeError(f"Orthanc did not answer on {self.url}/system within {timeout:.0f} s: {tail}")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM by process id, wait, SIGKILL if it does not exit."""
        p, self.process = self.process, None
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as r:
            return json.loads(r.read() or b"null")

    def __enter__(self) -> LocalOrthanc:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
