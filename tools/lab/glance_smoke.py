"""Smoke check of the lab Glance through python-glanceclient + keystoneauth (admin_token).

Run from the project venv: ``.venv/bin/python -m tools.lab.glance_smoke [--big]``.
Checks what the image handlers rely on: upload, hashes, direct_url/locations, the
locations API, Range downloads, http locations on queued images, token isolation.
Starts Glance if needed (and stops it again only if it started it).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import http.server
import io
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from .glance import GlanceService
from .service import LOOPBACK

MiB = 1024 * 1024


def _check(results: list[tuple[str, bool, str]], name: str, ok: bool, detail: Any = "") -> None:
    results.append((name, bool(ok), str(detail)))
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)


def _raw(glance: GlanceService, token: str, method: str, path: str, **kw: Any) -> Any:
    """A request through keystoneauth (raise_exc off) to see Glance's real status codes."""
    return glance.session(token).request(glance.endpoint + path, method, raise_exc=False, **kw)


def _serve_dir(directory: Path) -> tuple[http.server.ThreadingHTTPServer, int]:
    handler: Callable[..., Any] = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer((LOOPBACK, 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def run(glance: GlanceService, big: bool) -> list[tuple[str, bool, str]]:
    res: list[tuple[str, bool, str]] = []
    admin = glance.client("lab-admin")
    data = os.urandom(4 * MiB + 123)
    img = admin.images.create(name="smoke-small", disk_format="raw", container_format="bare")
    admin.images.upload(img.id, io.BytesIO(data))
    got = admin.images.get(img.id)
    _check(res, "upload 4 MiB -> active", got.status == "active" and got.size == len(data),
           f"status={got.status} size={got.size}")
    _check(res, "os_hash_algo/os_hash_value", got.os_hash_algo == "sha512"
           and got.os_hash_value == hashlib.sha512(data).hexdigest(), got.os_hash_algo)
    _check(res, "checksum (md5)", got.checksum == hashlib.md5(data).hexdigest(), got.checksum)
    direct = got.get("direct_url", "")
    _check(res, "direct_url file://", direct.startswith("file://")
           and Path(direct[7:]).is_file(), direct)
    locs = got.get("locations", [])
    _check(res, "locations in GET", bool(locs) and locs[0]["url"] == direct, locs)

    # Glance 33 policy, measured: fetch_image_location is "role:service or role:admin"
    # on the USER token's roles, checked after get_image visibility: a token of another
    # project (even with the service role) gets 404; the owning member gets 403.
    for token, want in (("lab-admin", 200), ("lab-member-p1", 404), ("lab-service", 404)):
        r = _raw(glance, token, "GET", f"/v2/images/{img.id}/locations")
        _check(res, f"GET /locations as {token} -> {want}", r.status_code == want,
               f"{r.status_code}")
    try:
        _check(res, "glanceclient get_image_locations",
               bool(admin.images.get_image_locations(img.id)), "ok")
    except Exception as exc:  # noqa: BLE001 - report, don't stop
        _check(res, "glanceclient get_image_locations", False, repr(exc))

    for rng, start, end in (("bytes=1000000-", 1000000, len(data)),
                            ("bytes=10-19", 10, 20), ("bytes=-100", len(data) - 100, len(data))):
        r = _raw(glance, "lab-admin", "GET", f"/v2/images/{img.id}/file",
                 headers={"Range": rng})
        _check(res, f"Range {rng}", r.status_code == 206 and r.content == data[start:end],
               f"{r.status_code} Content-Range={r.headers.get('Content-Range')} "
               f"len={len(r.content)}")
    r = _raw(glance, "lab-admin", "GET", f"/v2/images/{img.id}/file",
             headers={"Range": f"bytes={len(data) + 5}-"})
    _check(res, "Range past end -> 416", r.status_code == 416, r.status_code)

    r = _raw(glance, "lab-member-p2", "GET", f"/v2/images/{img.id}")
    _check(res, "other project cannot see private image", r.status_code == 404, r.status_code)
    r = _raw(glance, "nope", "GET", "/v2/images")
    _check(res, "unknown token -> 401", r.status_code == 401, r.status_code)

    with tempfile.TemporaryDirectory(prefix="ih-smoke-") as tmp:
        (Path(tmp) / "disk.raw").write_bytes(data)
        server, port = _serve_dir(Path(tmp))
        url = f"http://{LOOPBACK}:{port}/disk.raw"
        try:
            for api in ("add_location", "add_image_location"):
                q = admin.images.create(name=f"smoke-{api}", disk_format="raw",
                                        container_format="bare")
                try:
                    if api == "add_location":
                        admin.images.add_location(q.id, url, {})
                    else:
                        admin.images.add_image_location(q.id, url)
                    deadline = time.monotonic() + 10
                    while (g := admin.images.get(q.id)).status != "active" \
                            and time.monotonic() < deadline:
                        time.sleep(0.2)
                    body = b"".join(admin.images.data(q.id))
                    _check(res, f"http location via {api}", g.status == "active"
                           and body == data, f"status={g.status} size={g.size} "
                           f"direct_url={g.get('direct_url')} hash={g.os_hash_value and 'set'}")
                except Exception as exc:  # noqa: BLE001
                    _check(res, f"http location via {api}", False, repr(exc)[:300])
                admin.images.delete(q.id)
        finally:
            server.shutdown()
            server.server_close()

    if big:
        with tempfile.NamedTemporaryFile(prefix="ih-smoke-1g-") as f:
            f.truncate(1024 * MiB)  # sparse, with a few real blocks
            for off in (0, 300 * MiB, 1024 * MiB - 4096):
                f.seek(off)
                f.write(os.urandom(4096))
            f.flush()
            f.seek(0)
            sha = hashlib.sha512()
            for chunk in iter(lambda: f.read(8 * MiB), b""):
                sha.update(chunk)
            f.seek(0)
            b = admin.images.create(name="smoke-1g", disk_format="raw", container_format="bare")
            t0 = time.monotonic()
            admin.images.upload(b.id, f)  # file object: glanceclient sends it chunked
            dt = time.monotonic() - t0
            g = admin.images.get(b.id)
            _check(res, "1 GiB chunked upload", g.status == "active" and g.size == 1024 * MiB
                   and g.os_hash_value == sha.hexdigest(),
                   f"status={g.status} size={g.size} {dt:.1f} s")
            admin.images.delete(b.id)

    admin.images.delete(img.id)
    return res


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--big", action="store_true", help="also upload a 1 GiB file")
    args = parser.parse_args()
    glance = GlanceService()
    started = not glance.is_running()
    t0 = time.monotonic()
    glance.start()
    print(f"glance at {glance.endpoint} ({time.monotonic() - t0:.1f} s)")
    try:
        res = run(glance, args.big)
    finally:
        if started:
            glance.stop()
    failed = [r for r in res if not r[1]]
    print(f"{len(res) - len(failed)}/{len(res)} passed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
