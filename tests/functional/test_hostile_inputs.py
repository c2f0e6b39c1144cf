"""Hostile and malformed image records and locations, against the real lab (issue 11).

One table, one parametrized test: each row is a location, an image record or a
target an attacker or a mistake could produce -- file:// paths outside the
configured mounts, symlink escapes, FIFOs, devices, other images' files, rbd URLs
with forged fsids, in foreign pools or naming another image's data, http(s) URLs to
cloud metadata addresses and loopback ports, iscsi URLs to other portals or with
credentials, size and disk_format lies, qcow2 images with backing or data files,
vmdk descriptors naming host paths, control characters, CRLF, NUL and Unicode in
URLs. The image record is the real Glance 33's (behind the real Keystone); a
location Glance accepts through its APIs (LAB-NOTES: forged fsids, other pools,
other images' names) is reproduced by rewriting its row in Glance's database, and
a size, disk_format or property lie by editing the images table, as an old release,
another store or a database edit leaves it.

What each row proves: the fetch fails (``image-handlers fetch ... --json``: exit 1
when no handler could, 2 for bad input; the Python API: NoHandlerAvailable or
BadInput), THE REASON is asserted -- which handler refused (or ``*``: a location no
handler may read) and the words it gave, not only that it failed -- and NOTHING was
created: no target file, no partial or checkpoint beside it (the target's directory
is still empty), no new RBD image in pool vms (or images), no new pin or file in
shared_fs's directories on any mount.

Rows with ``outcome='verbatim'`` are not refusals, and say so: the chain copies the
image's own bytes (its recorded hash proves they are the image's) to a raw target,
which is Nova's ``_base`` file, and Nova's format inspection after the copy
refuses a backing file, a data file or a vmdk extent there
(tests/nova/test_nova_integration.py shows that for a backing file). The row
asserts the copy is byte for byte, so a change in that outcome is seen.

The Glance data API fallback: stream_copy always has Glance's own image data API as
a candidate. For the http rows it is withheld (the record is read from the real
Glance; only the ``endpoint`` of the source is empty), because that fallback would
have *Glance* read the same hostile URL on its side (its http store follows the
location row): the row shows that the handlers themselves never do.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import shutil
import sqlite3
import subprocess
import uuid

import pytest
import rbd

from image_handlers import api, exceptions
from image_handlers.chain import HandlerChain
from image_handlers.glance import GlanceReader
from image_handlers.targets import parse_target
from tests.functional.conftest import FS_IDS, image_bytes

MiB = 1 << 20
FORGED_FSID = '00000000-1111-2222-3333-444444444444'
VOLUME = '0b6f5c2e-7c1d-4f3e-9a55-2f1d1e3c4b5a'
IQN = 'iqn.2026-12.lab.image-handlers:hostile'


# -- the table -----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Row:
    """One hostile input. ``urls``: the image's locations (None: as Glance wrote
    them), with IMAGE, OTHER, FSID, XFS, BTRFS, HOSTILE, NGINX, NGINXPORT replaced;
    ``meta``: their metadata (None: the original row's); ``record``: columns of the
    images table to set for this row (restored after); ``target``: 'file',
    'qcow2' (a file target used as a qcow2 disk), 'rbd:POOL' (a fresh name in the
    pool) or a literal spec; ``refused_by``: handler names ('*': no handler may read
    the location) one of whose attempts carries ``reason``; ``rc``: 1 no handler,
    2 bad input (the error carries ``reason``)."""

    id: str
    image: str                      # which module image: fs, rbd, qcow_backing, ...
    handlers: str
    refused_by: tuple[str, ...]
    reason: str
    urls: tuple[str, ...] | None = None
    meta: dict | None = None
    record: dict = dataclasses.field(default_factory=dict)
    target: str = 'file'
    rc: int = 1
    via: str = 'api'                # 'cli': the real command; 'api': HandlerChain
    zero_copy_only: bool = False    # as Nova's Qcow2 backend asks (hooks.provide_disk)
    no_data_api: bool = False       # withhold Glance's data API (see the docstring)
    outcome: str = 'refused'        # or 'verbatim' (see the docstring)


FS = 'shared_fs'
SC = 'stream_copy'
RC = 'rbd_clone'
IC = 'iscsi_cor'
STAR = '*'
XFS_META = 'XFS_META'

ROWS = [
    # -- file:// (shared_fs's path gate) ----------------------------------------
    Row('file-etc-shadow', 'fs', FS, (FS,), "names file 'shadow'",
        urls=('file:///etc/shadow',), via='cli'),
    Row('file-etc-shadow-no-metadata', 'fs', FS, (FS,), "names file 'shadow'",
        urls=('file:///etc/shadow',), meta={}),
    Row('file-proc-self-environ', 'fs', FS, (FS,), "names file 'environ'",
        urls=('file:///proc/self/environ',)),
    Row('file-proc-self-root-escape', 'fs', FS, (FS,),
        'has no metadata id and is under none of the configured mount points',
        urls=('file:///proc/self/root/XFS/images/IMAGE',), meta={}),
    Row('file-dev-zero', 'fs', FS, (FS,), "names file 'zero'",
        urls=('file:///dev/zero',)),
    Row('file-outside-metadata-mountpoint', 'fs', FS, (FS,),
        'is not under its metadata mountpoint', urls=('file:///var/tmp/IMAGE',)),
    Row('file-dotdot', 'fs', FS, (STAR,), 'path contains ".."',
        urls=('file://XFS/images/../../../etc/IMAGE',), via='cli'),
    Row('file-dotdot-percent-encoded', 'fs', FS, (STAR,), 'path contains ".."',
        urls=('file://XFS/images/%2e%2e/%2e%2e/etc/IMAGE',)),
    Row('file-symlink-escape-dir', 'fs', FS, (FS,), 'outside',
        urls=('file://HOSTILE/link-etc/IMAGE',)),
    Row('file-symlink-to-host-file', 'fs', FS, (FS,),
        'outside', urls=('file://HOSTILE/link-passwd/IMAGE',)),
    Row('file-symlink-to-another-image', 'fs', FS, (FS,),
        "a link to another image's file is refused",
        urls=('file://HOSTILE/link-other/IMAGE',)),
    Row('file-another-images-file', 'fs', FS, (FS,), "names file 'OTHER'",
        urls=('file://XFS/images/OTHER',), via='cli'),
    Row('file-wrong-size-on-mount', 'fs', FS, (FS,),
        'has 4096 bytes but the image record says 1048576',
        urls=('file://HOSTILE/short/IMAGE',)),
    Row('file-fifo-named-as-image', 'fs', FS, (FS,), 'is a FIFO, not a regular file',
        urls=('file://HOSTILE/fifo/IMAGE',)),
    Row('file-directory-named-as-image', 'fs', FS, (FS,),
        'is a directory, not a regular file', urls=('file://HOSTILE/dir/IMAGE',)),
    Row('file-char-device-named-as-image', 'fs', FS, (FS,),
        'is a character device, not a regular file',
        urls=('file://HOSTILE/chr/IMAGE',)),
    Row('file-netloc-otherhost', 'fs', FS, (STAR,),
        "host 'otherhost': only file:///path is allowed",
        urls=('file://otherhost/XFS/images/IMAGE',)),
    Row('file-query-string', 'fs', FS, (STAR,), 'query or fragment not allowed',
        urls=('file://XFS/images/IMAGE?x=1',)),
    Row('file-nul-percent-escape', 'fs', FS, (STAR,), 'path contains NUL',
        urls=('file://XFS/images/IMAGE%00.raw',)),
    Row('file-newline-percent-escape', 'fs', FS, (FS,), 'names file',
        urls=('file://XFS/images/IMAGE%0A',)),
    Row('file-relative-path', 'fs', FS, (STAR,), 'path must be absolute',
        urls=('file:images/IMAGE',)),
    Row('file-unknown-share-id', 'fs', FS, (FS,),
        "which is not configured on this host",
        meta={'id': 'nope-images', 'mountpoint': 'XFS'}),
    Row('file-other-mount-claims-xfs-id', 'fs', FS, (FS,),
        'is not under its metadata mountpoint', urls=('file://BTRFS/images/IMAGE',)),
    Row('file-metadata-wrong-types', 'fs', FS, (FS,),
        'has no metadata id and is under none of the configured mount points',
        urls=('file:///etc/IMAGE',), meta={'id': ['xfs-images'], 'mountpoint': 7}),
    Row('file-size-negative', 'fs', FS, (FS,), 'image size -1 is unknown or invalid',
        record={'size': -1}),
    Row('file-size-2-pow-62', 'fs', FS, (FS,),
        f'has 1048576 bytes but the image record says {1 << 62}',
        record={'size': 1 << 62}),
    # -- rbd:// (rbd_clone, stream_copy: the claims) ------------------------------
    Row('rbd-forged-fsid', 'rbd', RC, (RC,),
        f'fsid {FORGED_FSID} is not this cluster\'s fsid',
        urls=(f'rbd://{FORGED_FSID}/images/IMAGE/snap',), target='rbd:vms', via='cli'),
    Row('rbd-foreign-pool-vms', 'rbd', RC, (RC,),
        "pool 'vms' is not an allowed source pool",
        urls=('rbd://FSID/vms/IMAGE/snap',), target='rbd:vms'),
    Row('rbd-another-images-data', 'rbd', RC, (RC,), "names RBD image 'OTHER'",
        urls=('rbd://FSID/images/OTHER/snap',), target='rbd:vms', via='cli'),
    Row('rbd-size-not-the-images', 'rbd', RC, (RC,),
        'is 1048576 bytes but Glance records 2097152', record={'size': 2 * MiB},
        target='rbd:vms'),
    Row('rbd-missing-snapshot', 'rbd', RC, (RC,), 'snapshot images/IMAGE@nosuch does '
        'not exist', urls=('rbd://FSID/images/IMAGE/nosuch',), target='rbd:vms'),
    Row('rbd-labelled-qcow2', 'rbd', RC, (RC,), 'disk_format qcow2 cannot be cloned '
        'as raw', record={'disk_format': 'qcow2'}, target='rbd:vms'),
    Row('rbd-vmdk-descriptor-label', 'rbd', RC, (RC,), 'disk_format vmdk cannot be '
        'cloned as raw', record={'disk_format': 'vmdk'}, target='rbd:vms'),
    Row('rbd-target-pool-images', 'rbd', RC, (RC,),
        "target pool 'images' is not allowed", target='rbd:images'),
    Row('rbd-nul-percent-escape', 'rbd', RC, (STAR,), 'contains "/" or NUL',
        urls=('rbd://FSID/images/IMAGE%00x/snap',), target='rbd:vms'),
    Row('rbd-slash-percent-escape', 'rbd', RC, (STAR,), 'contains "/" or NUL',
        urls=('rbd://FSID/images/..%2FIMAGE/snap',), target='rbd:vms'),
    Row('rbd-newline-percent-escape', 'rbd', RC, (RC,), "names RBD image 'IMAGE\\n'",
        urls=('rbd://FSID/images/IMAGE%0A/snap',), target='rbd:vms'),
    Row('rbd-unicode-lookalike-name', 'rbd', RC, (RC,), 'names RBD image',
        urls=('rbd://FSID/images/LOOKALIKE/snap',), target='rbd:vms'),
    Row('rbd-stream-copy-foreign-pool', 'rbd', SC, (SC,),
        "pool 'vms' is not an allowed source pool",
        urls=('rbd://FSID/vms/IMAGE/snap',), no_data_api=True),
    Row('rbd-stream-copy-forged-fsid', 'rbd', SC, (SC,),
        f'fsid {FORGED_FSID} is not the fsid of any cluster this host reads',
        urls=(f'rbd://{FORGED_FSID}/images/IMAGE/snap',), no_data_api=True),
    # -- http(s):// (stream_copy's allowed hosts) ----------------------------------
    Row('http-cloud-metadata-ipv4', 'fs', SC, (SC,),
        'host 169.254.169.254:80 is not in [image_handlers] http_location_allowed_hosts',
        urls=('http://169.254.169.254/latest/meta-data/iam/security-credentials/x',),
        no_data_api=True, via='cli'),
    Row('http-cloud-metadata-ipv6', 'fs', SC, (SC,),
        'host fd00:ec2::254:80 is not in', urls=('http://[fd00:ec2::254]/latest/x',),
        no_data_api=True),
    Row('http-gce-metadata-name', 'fs', SC, (SC,),
        'host metadata.google.internal:80 is not in',
        urls=('http://metadata.google.internal/computeMetadata/v1/x',),
        no_data_api=True),
    Row('http-loopback-other-port', 'fs', SC, (SC,), 'host 127.0.0.1:22 is not in',
        urls=('http://127.0.0.1:22/image',), no_data_api=True),
    Row('https-loopback-other-port', 'fs', SC, (SC,), 'host 127.0.0.1:6443 is not in',
        urls=('https://127.0.0.1:6443/image',), no_data_api=True),
    Row('http-localhost-name-for-allowed-ip', 'fs', SC, (SC,),
        'host localhost:NGINXPORT is not in',
        urls=('http://localhost:NGINXPORT/image',), no_data_api=True),
    Row('http-decimal-loopback', 'fs', SC, (SC,), 'host 2130706433:80 is not in',
        urls=('http://2130706433/image',), no_data_api=True),
    Row('http-userinfo-allowed-host-trick', 'fs', SC, (SC,),
        'host 169.254.169.254:80 is not in',
        urls=('http://NGINX@169.254.169.254/image',), no_data_api=True),
    Row('http-unicode-fullwidth-host', 'fs', SC, (SC,),
        'host \uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54:80 is not in',
        urls=('http://\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54/image',),
        no_data_api=True),
    Row('http-crlf-header-injection', 'fs', SC, (SC,), 'control characters',
        urls=('http://NGINX/image\r\nX-Injected: 1',), no_data_api=True),
    Row('http-unbalanced-bracket', 'fs', SC, (STAR,), 'Invalid IPv6 URL',
        urls=('http://[169.254.169.254/image',), no_data_api=True),
    # -- iscsi:// (iscsi_cor's portals) --------------------------------------------
    Row('iscsi-other-portal', 'fs', IC, (IC,),
        'portal 127.0.0.1:3261 is not in [image_handlers] iscsi_allowed_portals',
        urls=(f'iscsi://127.0.0.1:3261/{IQN}/1',), target='qcow2', via='cli'),
    Row('iscsi-metadata-address-portal', 'fs', IC, (IC,),
        'portal 169.254.169.254:3260 is not in',
        urls=(f'iscsi://169.254.169.254/{IQN}/1',), target='qcow2'),
    Row('iscsi-credentials-in-url', 'fs', IC, (STAR,),
        'credentials in a location URL are refused',
        urls=(f'iscsi://user:secret@127.0.0.1:3260/{IQN}/1',), target='qcow2'),
    Row('iscsi-chap-user-wrong-type', 'fs', IC, (STAR,),
        'chap_user 7 is not a plain user name',
        urls=(f'iscsi://127.0.0.1:3260/{IQN}/1',),
        meta={'chap_user': 7, 'chap_secret': 'images'}, target='qcow2'),
    Row('iscsi-chap-secret-inline', 'fs', IC, (STAR,),
        'is not a secret reference',
        urls=(f'iscsi://127.0.0.1:3260/{IQN}/1',),
        meta={'chap_user': 'u', 'chap_secret': 'the password itself!'},
        target='qcow2'),
    # -- schemes no handler serves ---------------------------------------------------
    Row('cinder-volume-recognised-unusable', 'fs', SC, (STAR,),
        'cinder:// locations (volume ' + VOLUME, urls=(f'cinder://{VOLUME}',),
        no_data_api=True, via='cli'),
    Row('cinder-not-a-uuid', 'fs', SC, (STAR,),
        'expected cinder://[STORE/]VOLUME_UUID', urls=('cinder://../../etc',),
        no_data_api=True),
    Row('unknown-scheme-gopher', 'fs', SC, (STAR,),
        "unknown location scheme 'gopher'", urls=('gopher://127.0.0.1:70/1',),
        no_data_api=True),
    # -- formats: labels that lie, backing files, data files, vmdk extents ----------
    Row('raw-label-qcow2-backing-host-file-qcow2-target', 'qcow_backing_as_raw',
        f'{FS}, {SC}', (SC,),
        "the target is to be a qcow2 disk, and a copy gives the image's own raw "
        'bytes', target='qcow2', via='cli'),
    Row('raw-label-qcow2-backing-host-file-raw-target', 'qcow_backing_as_raw', SC,
        (), '', outcome='verbatim'),
    Row('qcow2-backing-host-file-as-instance-disk', 'qcow_backing', f'{FS}, {SC}',
        (SC,), 'stream_copy copies the image, and only a zero-copy handler may make '
        'this disk', target='qcow2', zero_copy_only=True),
    # A FINDING: asked for a qcow2 instance disk WITHOUT zero_copy_only (the command
    # line; Nova's Qcow2 backend always sets it), stream_copy copies a qcow2 image
    # that has a backing file on this host verbatim as the disk.
    Row('qcow2-backing-host-file-qcow2-target-command-line', 'qcow_backing', SC,
        (SC,), 'no format check has seen', target='qcow2', via='cli'),
    Row('qcow2-data-file-as-instance-disk', 'qcow_data_file', f'{FS}, {SC}', (SC,),
        'only a zero-copy handler may make this disk', target='qcow2',
        zero_copy_only=True),
    Row('qcow2-data-file-raw-target', 'qcow_data_file', SC, (), '',
        outcome='verbatim'),
    Row('raw-label-vmdk-descriptor-qcow2-target', 'vmdk_as_raw', SC, (SC,),
        "a copy gives the image's own raw bytes", target='qcow2'),
    Row('vmdk-descriptor-host-extent-raw-target', 'vmdk', SC, (), '',
        outcome='verbatim'),
    Row('size-smaller-than-data-stream-copy', 'fs', SC, (SC,),
        'checksum mismatch copying to DIR/disk', 
        record={'size': MiB - 512}),
    # A FINDING, not a refusal that leaves nothing: a size claim larger than the
    # data looks like a connection closed early, so the partial is kept for a
    # resume (``image-handlers cleanup`` removes it once the image is gone or old).
    Row('size-larger-than-data-stream-copy', 'fs', SC, (SC,),
        'connection closed at byte 1048576 of 1049088', record={'size': MiB + 512},
        outcome='partial-kept'),
    # -- targets ---------------------------------------------------------------------
    Row('target-rbd-name-with-slash', 'rbd', RC, (), 'malformed RBD target',
        target='rbd:vms/a/b', rc=2, via='cli'),
    Row('target-rbd-name-with-snapshot', 'rbd', RC, (), 'malformed RBD target',
        target='rbd:vms/disk@snap', rc=2),
    Row('target-rbd-name-with-nul', 'rbd', RC, (), 'contains a NUL character',
        target='rbd:vms/disk\x00evil', rc=2),
    Row('target-names-a-directory', 'fs', FS, (), 'names a directory',
        target='DIR/', rc=2),
]


# -- the lab, once for the module ------------------------------------------------------

class _NoDataApi:
    """The real Glance reader with its data API withheld (``endpoint`` empty)."""

    endpoint = ''

    def __init__(self, real: GlanceReader):
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)


def _db(glance_lab) -> sqlite3.Connection:
    return sqlite3.connect(glance_lab.workdir / 'glance.sqlite')


def _upload(glance, data: bytes, backend: str, disk_format: str = 'raw') -> str:
    img = glance.images.create(name=f'hostile-{uuid.uuid4().hex[:8]}',
                               disk_format=disk_format, container_format='bare')
    glance.images.upload(img['id'], io.BytesIO(data), image_size=len(data),
                         backend=backend)
    return img['id']


def _on_nginx(glance, nginx_lab, workdir, data: bytes, disk_format: str) -> str:
    """An image whose only location is nginx (Glance's http store): its bytes
    skip the checks Glance runs on uploads, as for any data outside Glance."""
    src = workdir / f'src-{uuid.uuid4().hex[:8]}'
    src.write_bytes(data)
    url = nginx_lab.publish(src)
    img = glance.images.create(name=f'hostile-{uuid.uuid4().hex[:8]}',
                               disk_format=disk_format, container_format='bare')
    glance.images.add_location(img['id'], url, {}, validation_data={
        'os_hash_algo': 'sha512', 'os_hash_value': hashlib.sha512(data).hexdigest(),
        'checksum': hashlib.md5(data).hexdigest()})
    return img['id']


def _qemu_img(*args) -> None:
    subprocess.run(['qemu-img', *args], check=True, capture_output=True)


@pytest.fixture(scope='module')
def lab(glance, glance_lab, ceph_lab, nginx_lab, xfs_lab, btrfs_lab, ext4_lab,
        gluster_lab, tmp_path_factory):
    work = tmp_path_factory.mktemp('hostile')
    images: dict[str, str] = {}
    data: dict[str, bytes] = {}
    data['fs'] = image_bytes(MiB, seed=111)
    images['fs'] = _upload(glance, data['fs'], 'xfs')
    images['fs_other'] = _upload(glance, image_bytes(MiB, seed=112), 'xfs')
    data['rbd'] = image_bytes(MiB, seed=113)
    images['rbd'] = _upload(glance, data['rbd'], 'ceph')
    images['rbd_other'] = _upload(glance, image_bytes(MiB, seed=114), 'ceph')

    backing = work / 'backing.qcow2'
    _qemu_img('create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', '/etc/hostname',
              str(backing), '1M')
    data['qcow_backing'] = data['qcow_backing_as_raw'] = backing.read_bytes()
    images['qcow_backing'] = _on_nginx(glance, nginx_lab, work, backing.read_bytes(),
                                       'qcow2')
    images['qcow_backing_as_raw'] = _on_nginx(glance, nginx_lab, work,
                                              backing.read_bytes(), 'raw')
    with_data_file = work / 'data-file.qcow2'
    _qemu_img('create', '-q', '-f', 'qcow2', '-o', 'data_file=/etc/hostname',
              str(with_data_file), '1M')
    data['qcow_data_file'] = with_data_file.read_bytes()
    images['qcow_data_file'] = _on_nginx(glance, nginx_lab, work,
                                         data['qcow_data_file'], 'qcow2')
    vmdk = (b'# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n'
            b'createType="monolithicFlat"\n\n# Extent description\n'
            b'RW 2048 FLAT "/etc/shadow" 0\n\nddb.virtualHWVersion = "4"\n')
    data['vmdk'] = data['vmdk_as_raw'] = vmdk
    images['vmdk'] = _on_nginx(glance, nginx_lab, work, vmdk, 'vmdk')
    images['vmdk_as_raw'] = _on_nginx(glance, nginx_lab, work, vmdk, 'raw')

    # Hostile entries on the xfs share, each named by the image id.
    xfs = str(xfs_lab.mountpoint)
    hostile = os.path.join(xfs, f'hostile-{uuid.uuid4().hex[:6]}')
    fs_id, other_id = images['fs'], images['fs_other']
    for sub in ('link-passwd', 'link-other', 'short', 'fifo', 'dir', 'chr'):
        os.makedirs(os.path.join(hostile, sub))
    os.symlink('/etc', os.path.join(hostile, 'link-etc'))
    os.symlink('/etc/passwd', os.path.join(hostile, 'link-passwd', fs_id))
    os.symlink(os.path.join(xfs, 'images', other_id),
               os.path.join(hostile, 'link-other', fs_id))
    with open(os.path.join(hostile, 'short', fs_id), 'wb') as f:
        f.write(b'\0' * 4096)
    os.mkfifo(os.path.join(hostile, 'fifo', fs_id))
    os.mkdir(os.path.join(hostile, 'dir', fs_id))
    os.mknod(os.path.join(hostile, 'chr', fs_id), 0o600 | 0o020000, os.makedev(1, 3))

    conf_dir = work / 'conf'
    conf_dir.mkdir()
    state = work / 'state'
    mounts = {'xfs': xfs_lab, 'btrfs': btrfs_lab, 'ext4': ext4_lab,
              'gluster': gluster_lab}
    confs: dict[str, str] = {}

    def conf(handlers: str) -> str:
        if handlers not in confs:
            path = conf_dir / f'nova-{len(confs)}.conf'
            path.write_text(
                glance_lab.nova_conf()
                + '\n[libvirt]\nimages_rbd_pool = vms\n'
                + f'images_rbd_ceph_conf = {ceph_lab.conf_path}\nrbd_user = admin\n'
                + f'\n[image_handlers]\nstate_dir = {state}\n'
                + f'handlers = {handlers}\n'
                + 'shared_fs_mounts = ' + ', '.join(
                    f'{FS_IDS[n]}:{m.mountpoint}' for n, m in mounts.items()) + '\n'
                + f'http_location_allowed_hosts = 127.0.0.1:{nginx_lab.port}\n'
                + 'iscsi_allowed_portals = 127.0.0.1:3260\niscsi_timeout = 2\n'
                + 'copy_retries = 1\ncopy_retry_backoff = 0.05\nread_timeout = 3\n')
            confs[handlers] = str(path)
        return confs[handlers]

    db = _db(glance_lab)
    original_meta = {
        key: db.execute('select meta_data from image_locations where image_id = ? '
                        'and deleted = 0', (image_id,)).fetchone()[0]
        for key, image_id in images.items()}
    db.close()

    yield dataclasses.make_dataclass('Lab', ['images', 'data', 'conf', 'hostile',
                                             'xfs', 'btrfs', 'fsid', 'nginx', 'work',
                                             'original_meta', 'mounts'])(
        images, data, conf, hostile, xfs, str(btrfs_lab.mountpoint), ceph_lab.fsid,
        f'127.0.0.1:{nginx_lab.port}', work, original_meta,
        [str(m.mountpoint) for m in mounts.values()])

    shutil.rmtree(hostile, ignore_errors=True)
    for image_id in images.values():
        with contextlib.suppress(Exception):
            glance.images.delete(image_id)


# -- helpers -------------------------------------------------------------------------

def _fill(text: str, lab, row: Row) -> str:
    image_id = lab.images[row.image]
    other = lab.images['rbd_other' if row.image == 'rbd' else 'fs_other']
    lookalike = image_id.replace('a', '\u0430', 1) if 'a' in image_id else (
        '\u0430' + image_id[1:])
    for token, value in (('HOSTILE', lab.hostile), ('XFS', lab.xfs),
                         ('BTRFS', lab.btrfs), ('FSID', lab.fsid),
                         ('NGINXPORT', lab.nginx.split(':')[1]),
                         ('NGINX', lab.nginx), ('LOOKALIKE', lookalike),
                         ('OTHER', other), ('IMAGE', image_id)):
        text = text.replace(token, value)
    return text


@contextlib.contextmanager
def _record(glance_lab, lab, row: Row):
    """This row's locations and record edits in Glance's database; undone after."""
    image_id = lab.images[row.image]
    db = _db(glance_lab)
    saved_locs = db.execute('select value, meta_data, status, created_at, deleted '
                            'from image_locations where image_id = ? and deleted = 0',
                            (image_id,)).fetchall()
    cols = sorted(row.record)
    saved_cols = (db.execute(f'select {", ".join(cols)} from images where id = ?',
                             (image_id,)).fetchone() if cols else ())
    with db:
        if row.urls is not None or row.meta is not None:
            _, meta, status, created, deleted = saved_locs[0]
            if row.meta is not None:
                meta = _fill(json.dumps(row.meta), lab, row)
            db.execute('delete from image_locations where image_id = ?', (image_id,))
            for url in row.urls if row.urls is not None else (saved_locs[0][0],):
                db.execute('insert into image_locations (image_id, value, meta_data, '
                           'status, created_at, deleted) values (?, ?, ?, ?, ?, ?)',
                           (image_id, _fill(url, lab, row), meta, status, created,
                            deleted))
        for col in cols:
            db.execute(f'update images set {col} = ? where id = ?',
                       (row.record[col], image_id))
    try:
        yield image_id
    finally:
        with db:
            if row.urls is not None or row.meta is not None:
                db.execute('delete from image_locations where image_id = ?',
                           (image_id,))
                for loc in saved_locs:
                    db.execute('insert into image_locations (image_id, value, '
                               'meta_data, status, created_at, deleted) values '
                               '(?, ?, ?, ?, ?, ?)', (image_id, *loc))
            for col, value in zip(cols, saved_cols):
                db.execute(f'update images set {col} = ? where id = ?',
                           (value, image_id))
        db.close()


def _pools(rbd_admin) -> dict[str, set[str]]:
    found = {}
    for pool in ('vms', 'images'):
        with rbd_admin.open_ioctx(pool) as ioctx:
            found[pool] = set(rbd.RBD().list(ioctx))
    return found


def _handler_files(mount_points) -> set[str]:
    """Everything under shared_fs's own directory on each mount (pins, records)."""
    found = set()
    for mp in mount_points:
        for root, dirs, files in os.walk(os.path.join(mp, '.image_handlers')):
            found.update(os.path.join(root, n) for n in dirs + files)
    return found


def _target(lab, row: Row, tmp_dir: str) -> tuple[str, str]:
    """(target spec, disk format) for the row."""
    if row.target.startswith('rbd:'):
        pool, _, name = row.target[4:].partition('/')
        return f'rbd:{pool}/{name or "hostile-" + uuid.uuid4().hex[:8]}', 'raw'
    if row.target == 'DIR/':
        return tmp_dir + '/', 'raw'
    return os.path.join(tmp_dir, 'disk'), 'qcow2' if row.target == 'qcow2' else 'raw'


def _run(cli, lab, row: Row, image_id: str, spec: str, disk_format: str):
    """(rc, attempts [(handler, reason)], error text, result dict or None)."""
    conf = lab.conf(row.handlers)
    if row.via == 'cli':
        res = cli('fetch', image_id, spec, '--disk-format', disk_format,
                  '--config-file', conf, '--json', '--no-progress', timeout=120)
        out = json.loads(res.out) if res.out.strip() else {}
        attempts = [(a['handler'], a['reason']) for a in out.get('attempts', [])]
        return res.rc, attempts, out.get('error', '') + res.err, out
    chain = HandlerChain(api.make_conf([conf]))
    source = _NoDataApi(chain.glance) if row.no_data_api else None
    try:
        request = chain.request(image_id, parse_target(spec, disk_format),
                                source=source, zero_copy_only=row.zero_copy_only)
        result = chain.fetch(request)
    except exceptions.NoHandlerAvailable as exc:
        return 1, [(a.handler, a.reason) for a in exc.result.attempts], str(exc), None
    except exceptions.BadInput as exc:
        return 2, [], str(exc), None
    return 0, [(a.handler, a.reason) for a in result.attempts], '', result.to_dict()


@pytest.mark.parametrize('row', ROWS, ids=[r.id for r in ROWS])
def test_hostile_input_is_refused_with_its_reason_and_nothing_is_created(
        row, lab, glance_lab, rbd_admin, cli, tmp_path):
    assert len(ROWS) >= 40 and len({r.id for r in ROWS}) == len(ROWS)
    # shared_fs targets on the xfs share itself (reflink would work there).
    base = lab.xfs if row.handlers.startswith(FS) and row.target != 'DIR/' else str(
        tmp_path)
    tmp_dir = os.path.join(base, 'nova-hostile', uuid.uuid4().hex[:8])
    os.makedirs(tmp_dir)
    spec, disk_format = _target(lab, row, tmp_dir)
    pools, handler_files = _pools(rbd_admin), _handler_files(lab.mounts)
    try:
        with _record(glance_lab, lab, row) as image_id:
            rc, attempts, error, out = _run(cli, lab, row, image_id, spec, disk_format)
        reason = _fill(row.reason, lab, row).replace('DIR', tmp_dir)
        shown = '\n'.join(f'{h}: {r}' for h, r in attempts) + '\n' + error
        if row.outcome == 'verbatim':
            # Not refused by the chain: the image's own bytes, hash-verified, at a
            # raw target (Nova's _base); Nova's format inspection refuses them.
            assert rc == 0, shown
            digest = hashlib.sha512(lab.data[row.image]).hexdigest()
            assert out['handler'] == SC and out['verified'] == f'sha512:{digest}', out
            with open(spec, 'rb') as f:
                assert f.read() == lab.data[row.image]
            os.unlink(spec)
        else:
            assert rc == row.rc, shown
            if row.refused_by:
                assert any(h in row.refused_by and reason in r for h, r in attempts), (
                    f'expected {row.refused_by} to say {reason!r}:\n{shown}')
            else:
                assert reason in error, shown
        if row.outcome == 'partial-kept':
            assert sorted(os.listdir(tmp_dir)) == ['.disk.part', '.disk.part.json']
            assert os.path.getsize(os.path.join(tmp_dir, '.disk.part')) == MiB
            assert not os.path.exists(spec)
            for name in os.listdir(tmp_dir):
                os.unlink(os.path.join(tmp_dir, name))
        # Nothing created: no target, no partial or checkpoint beside it, no RBD
        # image, no pin or record of shared_fs on any mount.
        assert os.listdir(tmp_dir) == [], os.listdir(tmp_dir)
        assert _pools(rbd_admin) == pools
        assert _handler_files(lab.mounts) == handler_files
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
