"""``iscsi_cor``: the guest boots before the image is copied.

The image's LUN is attached read-only and the instance gets a local qcow2 disk
backed by it, meant to be opened with copy-on-read, so each block crosses the
network at most once. A ``lun_fill`` job then completes the copy (offline with
qemu's tools while no guest runs, through the guest's own qemu once one does),
verifies the LUN against the image hash, and drops the backing file, so the host
does not depend on the target for ever.

Attachment: qemu's userspace initiator (libiscsi) opens the LUN itself wherever
the disk is opened, so there is no host-side attachment to clean up; where the
kernel initiator exists, os-brick's ISCSI connector can attach it as a block device
instead (``iscsi_initiator``). A location is a claim: only configured portals are
read, CHAP secrets come from this host's config by reference, the LUN must be as
large as the image, and a LUN once found not to hold the image is refused.
"""
from __future__ import annotations

from oslo_config import cfg
from oslo_log import log as logging

from image_handlers import conf as ih_conf
from image_handlers.copy import check_target_path, publish_new
from image_handlers.copy.conf import copy_options
from image_handlers.copy.ratelimit import host_bucket
from image_handlers.handlers.base import Decision, Handler, Refused, Request
from image_handlers import exceptions
from image_handlers.iscsi import connectors, probe, reader, secrets
from image_handlers.iscsi.lun import LunSpec
from image_handlers.iscsi.verdicts import LunVerdicts
from image_handlers.locations import IscsiLocation, Location
from image_handlers.qemu import img
from image_handlers.results import QCOW2, REMOTE_LUN, Dependency, Provided
from image_handlers.targets import FILE, FileTarget
from image_handlers.trust.digest import DigestPass

LOG = logging.getLogger(__name__)

iscsi_opts = (
    cfg.ListOpt(
        'iscsi_allowed_portals', default=[],
        help='iSCSI portals (host:port, port 3260 when omitted) this host may attach '
             'image LUNs from. A location naming any other portal is refused: a '
             'location is a claim, and an attach reaches whatever it names.'),
    cfg.DictOpt(
        'iscsi_chap_secrets', default={},
        help='CHAP secrets by reference: REF:FILE, where FILE (mode 0600, owned by '
             'the service user) holds the password and REF is what a location\'s '
             '"chap_secret" metadata names. Secrets never live in Glance.'),
    cfg.StrOpt(
        'iscsi_initiator', default='auto', choices=['auto', 'qemu', 'kernel'],
        help='How LUNs are attached: "qemu" (qemu\'s userspace initiator, libiscsi: '
             'no host-side attachment), "kernel" (os-brick\'s ISCSI connector: a '
             'block device), or "auto" (kernel where the iscsi_tcp module is '
             'loaded, else qemu).'),
    cfg.FloatOpt(
        'iscsi_timeout', default=10.0, min=0.5,
        help='Seconds to wait for a portal and a LUN to answer before refusing it.'),
    cfg.StrOpt(
        'iscsi_libvirt_uri', default='qemu:///system',
        help='libvirt connection the fill job uses once a guest has the disk open '
             '(block pull inside the guest\'s qemu).'),
    cfg.FloatOpt(
        'iscsi_handover_timeout', default=600.0, min=1,
        help='Seconds a fill released for a guest waits for that guest to appear.'),
)


class IscsiCorHandler(Handler):
    name = 'iscsi_cor'
    target_kinds = frozenset({FILE})
    schemes = frozenset({'iscsi'})
    zero_copy = True
    opts = iscsi_opts

    def __init__(self, conf: cfg.ConfigOpts):
        super().__init__(conf)
        group = conf[ih_conf.GROUP]
        self.portals = {_portal(p) for p in group.iscsi_allowed_portals if p.strip()}
        self.secrets = {k.strip(): v.strip() for k, v in group.iscsi_chap_secrets.items()}
        self.timeout = group.iscsi_timeout
        self.state_dir = group.state_dir
        self.verdicts = LunVerdicts(group.state_dir)
        self.connector = connectors.connector_for(group.iscsi_initiator)

    # -- decide ---------------------------------------------------------------------

    def decide(self, request: Request, location: Location) -> Decision:
        assert isinstance(location, IscsiLocation)
        target: FileTarget = request.target
        image = request.image
        if target.disk_format != QCOW2:
            raise Refused('iscsi_cor makes a qcow2 disk backed by the LUN; the target '
                          'is a raw disk, which would need a full copy first')
        if not image.has_data or image.size is None:
            raise Refused(f'image status is {image.status!r} and its size '
                          f'{image.size!r}: nothing to attach')
        if (image.disk_format or 'raw').lower() != 'raw':
            raise Refused(f'disk_format {image.disk_format}: a LUN backs the disk as '
                          f'raw bytes, so only raw images are attached')
        expect = request.expect
        expected = expect.require_checksum()
        if location.portal not in self.portals:
            raise Refused(f'iscsi: portal {location.portal} is not in [image_handlers] '
                          f'iscsi_allowed_portals '
                          f'({", ".join(sorted(self.portals)) or "none"})')
        spec = self._spec(location)
        info = probe.probe(spec, self.timeout)
        if info.size != image.size:
            raise Refused(f'iscsi: LUN {spec.url} has {info.size} bytes, image '
                          f'{image.id} has {image.size}: not its LUN')
        identity = info.identity(spec)
        bad = self.verdicts.refused(image.id, identity)
        if bad:
            raise Refused(f'iscsi: {bad}')
        verified = ((expected is not None or expect.signature is not None)
                    and self.verdicts.verified(image.id, expect.key, identity))
        if verified:
            check = f'LUN verified before ({expect.describe()})'
        elif expect.signature is not None:
            check = (f'the LUN is read once first to verify its {expect.describe()}: '
                     f'no guest reads a signed image before its signature held')
        elif expected is not None:
            check = f'the fill job verifies the LUN against {expected.algo}'
        else:
            check = 'NOT verified'
        return Decision(
            f'copy-on-read qcow2 overlay on {spec.url} ({info.size} bytes, serial '
            f'{info.serial or "unknown"}) through {self.connector.name}; {check}',
            method='overlay', plan={'spec': spec, 'identity': identity,
                                    'verified': verified})

    def _spec(self, location: IscsiLocation) -> LunSpec:
        secret = (secrets.secret_file(self.secrets, location.chap_secret_ref)
                  if location.chap_secret_ref else None)
        return LunSpec.of(location, secret)

    # -- act ------------------------------------------------------------------------

    def act(self, request: Request, location: Location, decision: Decision) -> Provided:
        target: FileTarget = request.target
        image = request.image
        spec: LunSpec = decision.plan['spec']
        check_target_path(target.path)
        if request.expect.signature is not None and not decision.plan['verified']:
            self._verify_first(request, spec, decision.plan['identity'])
            decision.plan['verified'] = True
        attachment = self.connector.attach(spec)
        try:
            size = max(image.size, request.size or 0)
            # The LUN was just probed: the overlay records it without reopening it.
            publish_new(target.path, 'lun', lambda tmp: img.create_overlay(
                tmp, attachment.backing, 'raw', size=size, open_backing=False))
            job = self._start_fill(request, spec, attachment, decision)
        except BaseException:
            self.connector.detach(attachment)
            raise
        expect = request.expect
        verified = (f'{expect.describe()} (LUN verified before the disk was made)'
                    if decision.plan['verified'] else None)
        return Provided(
            method='overlay', bytes_copied=0, disk_format=QCOW2, job=job,
            verified=verified,
            depends_on=Dependency(
                REMOTE_LUN, spec.url,
                pin=f'{attachment.description}; the LUN is exported read-only',
                until=f'job {job} (lun_fill) has copied every block'),
            details={'copy_on_read': True, 'backing_file': attachment.backing,
                     'lun_identity': decision.plan['identity'],
                     'verification': ('done' if verified else
                                      f'pending in job {job}' if expect.checksum
                                      else 'none')})

    def prepare(self, request: Request, location: Location,
                decision: Decision) -> str | None:
        """Pre-cache: a disk is O(1) already; what the first disk of a signed image
        would pay is reading its LUN once to prove the signature, so that is done
        now (and the verdict kept)."""
        if request.expect.signature is None or decision.plan['verified']:
            return None
        spec: LunSpec = decision.plan['spec']
        self._verify_first(request, spec, decision.plan['identity'])
        return f'LUN {spec.url} verified ({request.expect.describe()})'

    def _start_fill(self, request: Request, spec: LunSpec, attachment,
                    decision: Decision) -> str:
        from image_handlers.jobs import runner
        group = self.conf[ih_conf.GROUP]
        expected = request.expect.checksum
        params = {
            'disk': request.target.path, 'image_id': request.image.id,
            'size': request.image.size, 'identity': decision.plan['identity'],
            'checksum': str(expected) if expected else None,
            # What a verdict of this LUN must prove (hash, and signature if signed).
            'verdict_key': request.expect.key,
            'lun': {'portal': spec.portal, 'iqn': spec.iqn, 'lun': spec.lun,
                    'user': spec.user, 'secret_file': spec.secret_file,
                    'secret_ref': spec.secret_ref},
            'attachment': attachment.record(),
            'libvirt_uri': group.iscsi_libvirt_uri,
            # Everything the worker needs, as configured now: it may run under
            # another configuration (or none, after a restart of nova-compute).
            'retries': group.copy_retries, 'read_timeout': group.read_timeout,
            'bandwidth_limit': group.bandwidth_limit,
            'handover_timeout': group.iscsi_handover_timeout}
        return runner.submit(self.conf, 'lun_fill', params,
                             f'fill {request.target.path} from {spec.url} (image '
                             f'{request.image.id})').id


    def _verify_first(self, request: Request, spec: LunSpec, identity: str) -> None:
        """Read the LUN once at hash speed (read-only, through qemu-nbd) and prove
        the Expectation before any disk is made of it; record the verdict either
        way, so later disks of this LUN are O(1) (or refused at once). The read
        is image traffic like any copy's: it takes the host's bandwidth_limit."""
        image = request.image
        digests = DigestPass(request.expect)
        group = self.conf[ih_conf.GROUP]
        limiter = (host_bucket(group.bandwidth_limit, copy_options(group).lock_dir)
                   if group.bandwidth_limit else None)
        with reader.served(spec.objects(), spec.image_opts(), read_only=True,
                           description=spec.url, timeout=self.timeout) as h:
            reader.read_through(h, 0, image.size, digests.feed, limiter, lambda: False,
                                lambda done: None, f'verification of {spec.url}',
                                self.timeout)
        try:
            proven = digests.finish(f'LUN {spec.url}')
        except exceptions.ChecksumMismatch as exc:
            self.verdicts.record(image.id, request.expect.key, identity, str(exc))
            raise
        self.verdicts.record(image.id, request.expect.key, identity)
        LOG.info('image %s: LUN %s read once: %s', image.id, spec.url, proven)


def _portal(value: str) -> str:
    value = value.strip().lower()
    return value if ':' in value else f'{value}:3260'
