"""Boot the lab guest on the running lab cloud through the APIs, and show from the
guest and from the storage side where its root disk came from.

    python -m tools.lab.cloud_boot --store ceph [--keep]   # RBD compute
    python -m tools.lab.cloud_boot --store xfs             # qcow2 compute

Uploads the bootable raw image (tools/lab/boot_disk.py) into the Glance store,
switches the compute's image backend to the one that store is meant for (ceph ->
rbd, xfs/fs -> qcow2), boots a server (compute API 2.37, networks 'none', flavor
m1.lab) and waits for it to be ACTIVE and for the guest's ``IH-DIGEST`` line in
the server's console output (``os-getConsoleOutput``): the sha256 of the first
``size`` bytes of its root disk as the guest read them, which must be the image
file's sha256. Then the storage side: the RBD disk's parent (``rbd info``) or the
instance disk's backing chain and whether it shares the Glance file's inode or
extents; and nova-compute's line saying which handler provided it. Deletes the
server and the image afterwards unless --keep. Prints the times measured.
Runs in the project's venv (keystoneauth/glanceclient, rados/rbd bindings).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from .boot_disk import BootDisk
from .cloud import FLAVOR_ID, CloudService
from .service import ServiceError

STORE_IMAGES_TYPE = {"ceph": "rbd", "xfs": "qcow2", "fs": "qcow2"}
DIGEST = re.compile(r"IH-DIGEST sha256=([0-9a-f]{64}) bytes=(\d+)")


def _wait(what: str, timeout: float, probe: Any, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise ServiceError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def _storage_side(cloud: CloudService, server: str, image: dict) -> dict[str, Any]:
    """What the disk is, read from Ceph or the file system, not from the API."""
    if cloud.state.get("images_type") == "rbd":
        import rados
        import rbd
        cluster = rados.Rados(conffile=str(cloud.ceph.conf_path), rados_id="admin")
        cluster.connect(timeout=10)
        try:
            with cluster.open_ioctx("vms") as ioctx:
                with contextlib.closing(rbd.Image(ioctx, f"{server}_disk",
                                                  read_only=True)) as disk:
                    try:
                        spec = disk.get_parent_image_spec()
                        parent = f"{spec['pool_name']}/{spec['image_name']}@{spec['snap_name']}"
                    except rbd.ImageNotFound:
                        parent = None
                    return {"disk": f"vms/{server}_disk", "size": disk.size(),
                            "parent": parent}
        finally:
            cluster.shutdown()
    from image_handlers.shared_fs import fiemap
    disk = cloud.instances_path / server / "disk"
    glance_file = Path(next(loc["url"] for loc in image.get("locations", [])
                            if loc["url"].startswith("file://"))[len("file://"):])
    chain = []
    path: Path | None = disk
    while path is not None:
        with open(path, "rb") as f:
            head = f.read(65536)
        backing = None
        if head[:4] == b"QFI\xfb":
            off, size = int.from_bytes(head[8:16], "big"), int.from_bytes(head[16:20], "big")
            backing = Path(head[off:off + size].decode()) if off else None
        st = os.stat(path)
        with open(path, "rb") as f:
            shared = fiemap.shared_bytes(f.fileno())
        chain.append({"path": str(path), "inode": st.st_ino, "links": st.st_nlink,
                      "shared_extent_bytes": shared})
        path = backing if backing is not None and backing.is_absolute() else None
    g = os.stat(glance_file)
    return {"glance_file": str(glance_file), "glance_inode": g.st_ino, "chain": chain,
            "same_inode_as_glance_file": [c["path"] for c in chain
                                          if c["inode"] == g.st_ino]}


def boot(store: str, keep: bool = False) -> dict[str, Any]:
    cloud = CloudService()
    cloud.state = cloud._load_state()
    if not cloud.state.get("ready"):
        raise ServiceError("the lab cloud is not running: tools/cloud.sh start")
    out: dict[str, Any] = {"store": store, "images_type": STORE_IMAGES_TYPE[store]}
    t0 = time.monotonic()
    cloud.set_images_type(STORE_IMAGES_TYPE[store])
    out["switch_seconds"] = round(time.monotonic() - t0, 2)
    disk = BootDisk().build()
    glance = cloud.glance.keystone_client("admin", "admin")
    t0 = time.monotonic()
    image = glance.images.create(name=f"lab-guest-{store}", disk_format="raw",
                                 container_format="bare")
    server = None
    try:
        with open(disk.path, "rb") as f:
            glance.images.upload(image["id"], f, backend=store)
        out["upload_seconds"] = round(time.monotonic() - t0, 2)
        image = dict(glance.images.get(image["id"]))
        t0 = time.monotonic()
        server = cloud.compute_request("POST", "/servers", {"server": {
            "name": f"lab-guest-{store}", "imageRef": image["id"],
            "flavorRef": FLAVOR_ID, "networks": "none"}})["server"]["id"]

        def status() -> str | None:
            s = cloud.compute_request("GET", f"/servers/{server}")["server"]
            if s["status"] == "ERROR":
                raise ServiceError(f"server {server} ERROR: {s.get('fault')}")
            return s["status"] if s["status"] == "ACTIVE" else None
        _wait("ACTIVE", 300, status)
        out["active_seconds"] = round(time.monotonic() - t0, 2)

        def digest() -> re.Match | None:
            text = cloud.compute_request("POST", f"/servers/{server}/action",
                                         {"os-getConsoleOutput": {"length": 50}})["output"]
            return DIGEST.search(text)
        found = _wait("the guest's IH-DIGEST line", 300, digest, interval=1.0)
        out["digest_seconds"] = round(time.monotonic() - t0, 2)
        out.update(server=server, image=image["id"], image_sha256=disk.sha256,
                   guest_read_sha256=found.group(1), guest_read_bytes=int(found.group(2)),
                   guest_read_the_image=found.group(1) == disk.sha256)
        out["storage"] = _storage_side(cloud, server, image)
        log = cloud.compute_log.read_text(errors="replace")
        out["compute_log"] = [line.split("] ", 1)[-1] for line in log.splitlines()
                              if image["id"] in line and ("provided by" in line
                                                          or "made by" in line)]
        return out
    finally:
        if not keep:
            if server:
                cloud.compute_request("DELETE", f"/servers/{server}")

                def gone() -> bool:
                    try:
                        cloud.compute_request("GET", f"/servers/{server}")
                    except ServiceError:
                        return True
                    return False
                _wait("the server's deletion", 120, gone)
            glance.images.delete(image["id"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=sorted(STORE_IMAGES_TYPE), default="ceph")
    parser.add_argument("--keep", action="store_true", help="keep server and image")
    args = parser.parse_args(argv)
    try:
        out = boot(args.store, keep=args.keep)
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2))
    return 0 if out["guest_read_the_image"] else 1


if __name__ == "__main__":
    sys.exit(main())
