"""The demo run by ``tools/demo.sh``: the handler chain against the embedded lab.

Starts a real Glance and nginx on loopback, creates a few images that exercise the
decisions (Glance-stored, http location, no data), runs the real ``image-handlers``
command on them and prints what each handler did and why. Then interrupts a copy
with kill -9 and shows it resume. Stops the lab at the end.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tools.lab import CephService, GlanceService, GlusterService, LoopFsService
from tools.lab import write_fs_marker
from tools.lab.tgt import TgtService
from tools.lab.nginx import NginxService
from tools.lab.service import LAB_DIR
from tools.demo_trust import demo_trust

BIN = Path(sys.executable).parent / 'image-handlers'
MiB = 1 << 20


def _checkpoint_offset(path: Path) -> int:
    """The durable offset a copy's checkpoint records (0 before the first one)."""
    try:
        return json.loads(path.read_text())['offset']
    except (FileNotFoundError, ValueError, KeyError):
        return 0


def banner(text: str) -> None:
    print(f'\n=== {text} ' + '=' * max(0, 70 - len(text)), flush=True)


def run(*args: str, show_json: bool = False) -> subprocess.CompletedProcess:
    print(f'$ image-handlers {shlex.join(args)}', flush=True)
    proc = subprocess.run([str(BIN), *args], capture_output=True, text=True)
    out = proc.stdout
    if show_json and proc.stdout.strip().startswith('{'):
        data = json.loads(proc.stdout)
        out = json.dumps({k: data[k] for k in (
            'handler', 'location', 'method', 'zero_copy', 'bytes_copied',
            'disk_format', 'depends_on', 'job', 'seconds')}, indent=1)
    print(out.rstrip())
    errors = [l for l in proc.stderr.splitlines() if 'error:' in l or 'WARNING' in l]
    for line in errors[-3:]:
        print(f'  (stderr) {line[:300]}')
    print(f'  -> exit status {proc.returncode}', flush=True)
    return proc


def demo_data(size: int) -> bytes:
    """Random-looking data with zero megabytes in between (a typical raw disk)."""
    out = bytearray()
    for i in range(size // MiB):
        out += bytes(MiB) if i % 4 == 3 else hashlib.sha512(b'%d' % i).digest() * (MiB // 64)
    return bytes(out)


def _settle() -> None:
    print('(waiting 2 s: a verdict taken within 2 s of the file\'s last change is '
          'not reused, since coarse timestamps could hide a write)')
    time.sleep(2.1)


def _rewrite_location(glance, image_id: str, url: str, metadata: dict) -> None:
    """Put a location row straight into the lab Glance's database: its API refuses
    file:// URLs, but databases hold rows from old releases, other tools, mistakes."""
    import sqlite3
    db = sqlite3.connect(glance.workdir / 'glance.sqlite')
    with db:
        db.execute('update image_locations set value = ?, meta_data = ? where '
                   'image_id = ? and deleted = 0', (url, json.dumps(metadata), image_id))
    db.close()


def demo_shared_fs(client, glance, conf: Path, work: Path, data: bytes, xfs,
                   gluster) -> None:
    """Glance's filesystem store on shared mounts: no byte copied."""
    banner('an image in Glance\'s file store on GlusterFS, without shared_fs')
    on_gluster = client.images.create(name='demo-on-gluster', disk_format='raw',
                                      container_format='bare')
    client.images.upload(on_gluster['id'], io.BytesIO(data), image_size=len(data),
                         backend='gluster')
    run('explain', on_gluster['id'], str(work / 'base-g.raw'), '--config-file', str(conf))
    _settle()
    sfs = work / 'shared.conf'
    sfs.write_text(conf.read_text().replace(
        'handlers = rbd_clone, stream_copy',
        'handlers = rbd_clone, shared_fs, stream_copy')
        + f'shared_fs_mounts = xfs-images:{xfs.mountpoint}, '
          f'gluster-images:{gluster.mountpoint}\n'
        + 'shared_fs_methods = reflink, symlink, overlay\n')
    c = ['--config-file', str(sfs)]
    banner('with shared_fs (symlinks allowed): a raw disk off the share is a link to '
           'a pin')
    run('fetch', on_gluster['id'], str(work / 'base-g.raw'), *c)
    print(f'base-g.raw -> {os.readlink(work / "base-g.raw")}')
    banner('a qcow2 instance disk on a local disk: an overlay backed by the same pin')
    run('fetch', on_gluster['id'], str(work / 'disk-g.qcow2'), '--disk-format',
        'qcow2', *c)
    print(f'disk-g.qcow2 allocates {os.stat(work / "disk-g.qcow2").st_blocks * 512} '
          f'bytes for a {len(data)}-byte image')
    banner('an image on XFS, the disk on the same XFS: a reflink (shared extents)')
    on_xfs = client.images.create(name='demo-on-xfs', disk_format='raw',
                                  container_format='bare')
    client.images.upload(on_xfs['id'], io.BytesIO(data), image_size=len(data),
                         backend='xfs')
    _settle()
    (xfs.mountpoint / 'nova').mkdir(exist_ok=True)
    disk = xfs.mountpoint / 'nova' / 'disk-x.raw'
    run('fetch', on_xfs['id'], str(disk), *c)
    from image_handlers.shared_fs import fiemap
    with open(disk, 'rb') as f:
        print(f'{disk.name}: {fiemap.shared_bytes(f.fileno())} of {len(data)} bytes '
              f'share extents with Glance\'s file (FIEMAP)')
    banner('a second disk of the same image: the verification verdict is reused')
    run('fetch', on_xfs['id'], str(disk) + '.2', *c)
    banner('hostile: a file location naming /etc/shadow is refused with the reason')
    hostile = client.images.create(name='demo-file-hostile', disk_format='raw',
                                   container_format='bare')
    client.images.upload(hostile['id'], io.BytesIO(b'x' * 4096), image_size=4096,
                         backend='xfs')
    _rewrite_location(glance, hostile['id'], 'file:///etc/shadow',
                      {'id': 'xfs-images', 'mountpoint': str(xfs.mountpoint)})
    print(f'(the location row of image {hostile["id"]} now says file:///etc/shadow)')
    run('fetch', hostile['id'], str(work / 'x.raw'), *c)
    print(f'x.raw exists afterwards: {os.path.exists(work / "x.raw")}')
    for image in (on_gluster, on_xfs, hostile):
        client.images.delete(image['id'])


def demo_iscsi_cor(client, glance, conf: Path, work: Path, data: bytes) -> None:
    """An image LUN: the disk is usable at once, a job fills and verifies it."""
    banner('an image published as a read-only LUN (tgt): the disk is ready at once')
    tgt = TgtService('demo-tgt')
    try:
        tgt.start()
        src = work / 'lun-image.raw'
        src.write_bytes(data)
        export = tgt.export('demo-lun', src)
        image = client.images.create(name='demo-on-lun', disk_format='raw',
                                     container_format='bare')
        client.images.upload(image['id'], io.BytesIO(data), image_size=len(data))
        _rewrite_location(glance, image['id'], export.url, {})
        print(f'(image {image["id"]}: its location row now says {export.url})')
        cor = work / 'iscsi.conf'
        cor.write_text(conf.read_text().replace(
            'handlers = rbd_clone, stream_copy', 'handlers = iscsi_cor, stream_copy')
            + f'iscsi_allowed_portals = {tgt.portal}\n')
        disk = work / 'disk-lun.qcow2'
        res = run('fetch', image['id'], str(disk), '--disk-format', 'qcow2',
                  '--config-file', str(cor), '--json', show_json=True)
        job = json.loads(res.stdout)['job']
        banner('the fill job copies the rest and verifies the LUN, then lets go of it')
        run('jobs', 'wait', job, '--config-file', str(cor))
        info = json.loads(subprocess.run(['qemu-img', 'info', '-U', '--output=json',
                                          str(disk)], capture_output=True,
                                         text=True).stdout)
        print(f'{disk.name}: backing file {info.get("backing-filename", "none")}, '
              f'sessions on the target: {len(tgt.sessions("demo-lun"))}')
        client.images.delete(image['id'])
    finally:
        tgt.stop()


def main() -> int:
    work = LAB_DIR / 'demo'
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ceph, nginx = CephService(), NginxService()
    xfs, gluster = LoopFsService('xfs', name='demo-xfs'), GlusterService(name='demo-gluster')
    glance = GlanceService(ceph=ceph, file_stores={
        'xfs': (xfs.mountpoint / 'images', {'id': 'xfs-images',
                                            'mountpoint': str(xfs.mountpoint)}),
        'gluster': (gluster.mountpoint / 'images', {
            'id': 'gluster-images', 'mountpoint': str(gluster.mountpoint)})})
    try:
        banner('starting the lab (Ceph, an XFS loop mount, GlusterFS, Glance 33 with '
               'fs/rbd/http stores and file stores on the mounts, nginx)')
        ceph.start()
        for fs, fs_id in ((xfs, 'xfs-images'), (gluster, 'gluster-images')):
            fs.start()
            write_fs_marker(fs.mountpoint, fs_id)   # as the operator does, once
            (fs.mountpoint / 'images').mkdir(exist_ok=True)
        glance.start()
        nginx.start()
        print(f'ceph fsid {ceph.fsid}, glance at {glance.endpoint}, '
              f'nginx at {nginx.base_url}')
        conf = work / 'nova.conf'
        conf.write_text(glance.nova_conf() + f"""
[libvirt]
images_rbd_pool = vms
images_rbd_ceph_conf = {ceph.conf_path}
rbd_user = admin

[image_handlers]
handlers = rbd_clone, stream_copy
state_dir = {work}/state
http_location_allowed_hosts = 127.0.0.1
progress_interval = 1
""")
        print(f'nova.conf for the demo: {conf}\n{conf.read_text()}')
        client = glance.client()

        data = demo_data(192 * MiB)
        stored = client.images.create(name='demo-glance-stored', disk_format='raw',
                                      container_format='bare')
        client.images.upload(stored['id'], io.BytesIO(data), image_size=len(data))
        src = work / 'web-image.raw'
        src.write_bytes(data[:64 * MiB])
        url = nginx.publish(src)
        web = client.images.create(name='demo-http-location', disk_format='raw',
                                   container_format='bare')
        client.images.add_location(web['id'], url, {}, validation_data={
            'os_hash_algo': 'sha512',
            'os_hash_value': hashlib.sha512(data[:64 * MiB]).hexdigest()})
        empty = client.images.create(name='demo-no-data', disk_format='raw',
                                     container_format='bare')
        c = ['--config-file', str(conf)]

        banner('installed handlers and the order enabled per hypervisor')
        run('handlers', *c)

        banner('explain: what would happen, and why (nothing is written)')
        run('explain', stored['id'], str(work / 'disk-a.raw'), *c)

        banner('fetch an image stored in Glance (verified, sparse, atomic)')
        run('fetch', stored['id'], str(work / 'disk-a.raw'), *c, '--json', show_json=True)
        st = os.stat(work / 'disk-a.raw')
        print(f'disk-a.raw: {st.st_size} bytes, {st.st_blocks * 512} allocated (sparse)')

        banner('fetch an image whose location is an allowed http server')
        run('fetch', web['id'], str(work / 'disk-b.raw'), *c)

        banner('an image with no data: every handler says why not (exit 1)')
        run('fetch', empty['id'], str(work / 'disk-c.raw'), *c)

        banner('an existing disk is never overwritten (exit 2)')
        run('fetch', stored['id'], str(work / 'disk-a.raw'), *c)

        banner('an image in Ceph, instance disk in Ceph: copy-on-write clone (O(1))')
        in_ceph = client.images.create(name='demo-in-ceph', disk_format='raw',
                                       container_format='bare')
        client.images.upload(in_ceph['id'], io.BytesIO(data), image_size=len(data),
                             backend='ceph')
        run('fetch', in_ceph['id'], 'rbd:vms/demo-disk', *c)

        banner('the same image for a local-file target: no clone possible, full copy')
        run('fetch', in_ceph['id'], str(work / 'disk-e.raw'), *c)

        banner('a hostile location: Glance accepts an rbd URL naming ANOTHER image')
        hostile = client.images.create(name='demo-hostile', disk_format='raw',
                                       container_format='bare')
        try:
            client.images.add_location(
                hostile['id'], ceph.rbd_url('images', in_ceph['id']), {'store': 'ceph'})
            print(f'Glance accepted location {ceph.rbd_url("images", in_ceph["id"])} '
                  f'for image {hostile["id"]}')
            run('explain', hostile['id'], 'rbd:vms/demo-disk-2', *c)
        except Exception as exc:  # a future Glance may refuse it: say so
            print(f'Glance refused the hostile location: {exc}')

        demo_shared_fs(client, glance, conf, work, data, xfs, gluster)
        demo_iscsi_cor(client, glance, conf, work, data)
        demo_trust(banner, run, ceph, work, data[:32 * MiB])

        banner('inside Nova 34 (patched): root disks for instances, the same decisions')
        nova_python = LAB_DIR / 'venv-nova' / 'bin' / 'python'
        proc = subprocess.run(
            [str(nova_python), '-W', 'ignore', '-m', 'tools.demo_nova',
             '--ceph-conf', str(ceph.conf_path), '--glance-endpoint', glance.endpoint,
             '--work', str(work), '--image', in_ceph['id'],
             '--hostile', hostile['id'], '--victim', in_ceph['id']],
            capture_output=True, text=True)
        print(proc.stdout.rstrip())
        if proc.returncode:
            print(f'  (the Nova demo failed, exit {proc.returncode}): '
                  f'{proc.stderr[-1500:]}')

        banner('resume: kill -9 a rate-limited copy half way, then run it again')
        slow = work / 'slow.conf'
        slow.write_text(conf.read_text() + 'bandwidth_limit = 16777216\n'
                        'checkpoint_interval = 8388608\n')
        target = work / 'disk-d.raw'
        checksum = 'sha512:' + hashlib.sha512(data[:64 * MiB]).hexdigest()
        argv = [str(BIN), 'copy', url, str(target), '--checksum', checksum,
                '--config-file', str(slow), '--json']
        print(f'$ {shlex.join(argv[1:])} &   # 16 MiB/s limit; kill -9 once a '
              f'checkpoint says 24 MiB are durable')
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        checkpoint = work / '.disk-d.raw.part.json'
        deadline = time.monotonic() + 60
        while (_checkpoint_offset(checkpoint) < 24 * MiB and proc.poll() is None
               and time.monotonic() < deadline):
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        partial = [p.name for p in work.iterdir() if p.name.startswith('.disk-d')]
        print(f'killed; kept for resume: {partial}')
        res = run('copy', url, str(target), '--checksum', checksum, '--config-file',
                  str(conf), '--json')
        if res.returncode == 0:
            details = json.loads(res.stdout)['details']
            print(f'resumed from byte {details["resumed_from"]} of {64 * MiB}: this run '
                  f'fetched only the remaining '
                  f'{json.loads(res.stdout)["bytes_copied"]} bytes, then verified '
                  f'the whole file')
        subprocess.run(['rbd', 'rm', 'vms/demo-disk'], env={**os.environ, **ceph.env()},
                       capture_output=True)
        for image in (stored, web, empty, in_ceph, hostile):
            client.images.delete(image['id'])
    finally:
        banner('stopping the lab')
        nginx.stop()
        glance.stop()
        gluster.stop()
        xfs.stop()
        ceph.stop()
        shutil.rmtree(work, ignore_errors=True)
        print('done: nothing left running')
    return 0


if __name__ == '__main__':
    sys.exit(main())
