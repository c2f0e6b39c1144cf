"""The Nova part of the demo, run by tools/demo.py under the patched Nova 34
(``.lab/venv-nova/bin/python -m tools.demo_nova ...``) against the lab it started.

Nova's own spawn code creates instance root disks in Ceph:
1. from an image in the lab cluster: rbd_clone makes a copy-on-write clone;
2. from an image whose location names ANOTHER image's data (Glance accepts it):
   Nova 34 on its own clones the other image's data; with the chain it is refused.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import time

import rados
import rbd

from tools.lab import nova_env as lab_nova


class Reasons(logging.Handler):
    """What the chain logged, to print its reasons."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def parent_of(cluster: rados.Rados, name: str) -> str:
    with cluster.open_ioctx('vms') as ioctx:
        with contextlib.closing(rbd.Image(ioctx, name, read_only=True)) as disk:
            try:
                spec = disk.get_parent_image_spec()
            except rbd.ImageNotFound:
                return 'no parent (a full copy)'
    return f'{spec["pool_name"]}/{spec["image_name"]}@{spec["snap_name"]}'


def remove(cluster: rados.Rados, name: str) -> None:
    with cluster.open_ioctx('vms') as ioctx:
        with contextlib.suppress(rbd.ImageNotFound):
            rbd.RBD().remove(ioctx, name)


def main() -> int:
    parser = argparse.ArgumentParser()
    for arg in ('--ceph-conf', '--glance-endpoint', '--work', '--image', '--hostile',
                '--victim'):
        parser.add_argument(arg, required=True)
    args = parser.parse_args()
    reasons = Reasons()
    logging.getLogger('image_handlers').addHandler(reasons)
    logging.getLogger('image_handlers').setLevel(logging.INFO)
    conf = lab_nova.NovaConf()
    conf.set(lab_nova.lab_overrides(f'{args.work}/instances', args.glance_endpoint,
                                    args.ceph_conf, f'{args.work}/nova-state'))
    cluster = rados.Rados(conffile=args.ceph_conf, rados_id='admin')
    cluster.connect(timeout=10)
    context = lab_nova.request_context()
    made: list[str] = []
    try:
        inst = lab_nova.make_instance(context, args.image)
        t0 = time.monotonic()
        backend = lab_nova.create_root_disk(context, inst, args.image)
        seconds = time.monotonic() - t0
        made.append(backend.rbd_name)
        print(f'Nova spawn code made the root disk of instance {inst.uuid}:\n'
              f'  vms/{backend.rbd_name}: parent {parent_of(cluster, backend.rbd_name)}'
              f' in {seconds:.2f} s, nothing downloaded')
        print('  ' + next(l for l in reasons.lines if 'provided by' in l))

        print(f'\nimage {args.hostile}: its only location names image {args.victim}')
        conf.set({'image_handlers': {'nova_integration': False}})
        alone = lab_nova.make_instance(context, args.hostile)
        lab_nova.create_root_disk(context, alone, args.hostile)
        made.append(f'{alone.uuid}_disk')
        print(f'  Nova 34 on its own (nova_integration = false): vms/{alone.uuid}_disk '
              f'has parent {parent_of(cluster, f"{alone.uuid}_disk")}, ANOTHER '
              f'image\'s data in this instance')
        conf.set({'image_handlers': {'nova_integration': True}})
        reasons.lines.clear()
        inst = lab_nova.make_instance(context, args.hostile)
        try:
            lab_nova.create_root_disk(context, inst, args.hostile)
            made.append(f'{inst.uuid}_disk')
            print('  UNEXPECTED: the patched Nova made a disk')
            return 1
        except Exception as exc:  # noqa: BLE001 - printed: it is the point
            refusal = next(l for l in reasons.lines if 'names RBD image' in l)
            print(f'  patched Nova: no disk made. rbd_clone refused the clone:\n'
                  f'    {refusal[refusal.index("rbd: "):]}\n'
                  f'  and the download Nova would fall back to was refused too:\n'
                  f'    {type(exc).__name__}: {exc}')
        return 0
    finally:
        for name in made:
            remove(cluster, name)
        cluster.shutdown()
        conf.clear()


if __name__ == '__main__':
    raise SystemExit(main())
