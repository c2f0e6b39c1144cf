"""``image-handlers``: fetch, explain, copy and list handlers from the command line.

Exit status: 0 success, 1 no handler could provide the image (or the copy failed),
2 bad usage or bad input.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from oslo_log import log as logging

from image_handlers import api
from image_handlers import chain as ih_chain
from image_handlers import cli_progress
from image_handlers import conf as ih_conf
from image_handlers import exceptions
from image_handlers.locations import redact_url
from image_handlers.results import FAILED, USED, Attempt, FetchResult, Provided

LOG = logging.getLogger(__name__)

EXIT_OK, EXIT_NO_HANDLER, EXIT_BAD_INPUT = 0, 1, 2
COPY_HANDLER = 'stream_copy'   # what ``copy`` reports: the same engine, no Glance
DEFAULT_CONFIG = '/etc/nova/nova.conf'
NEEDS_GLANCE = ('fetch', 'explain')   # the others work without any config file


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse exits 2 too; keep its message form
        self.print_usage(sys.stderr)
        self.exit(EXIT_BAD_INPUT, f'{self.prog}: error: {message}\n')


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument('--config-file', action='append', default=[],
                        help='nova.conf-style file (repeatable); default: '
                             '/etc/nova/nova.conf')
    common.add_argument('--config-dir', action='append', default=[])
    common.add_argument('--json', action='store_true', help='print one JSON object')
    common.add_argument('--virt-driver', default='libvirt',
                        help='hypervisor whose handler order applies (default libvirt)')
    common.add_argument('--debug', action='store_true', help='log at DEBUG')

    parser = _Parser(prog='image-handlers', description=__doc__.splitlines()[0])
    # Also before the command, as nova-manage and glance-manage take them; these
    # come first, then the command's own.
    parser.add_argument('--config-file', action='append', default=[],
                        dest='config_file_before', metavar='CONFIG_FILE',
                        help='nova.conf-style file (repeatable), here or after the '
                             'command; default: /etc/nova/nova.conf')
    parser.add_argument('--config-dir', action='append', default=[],
                        dest='config_dir_before', metavar='CONFIG_DIR')
    sub = parser.add_subparsers(dest='command', required=True, parser_class=_Parser)
    for name, helptext in (('fetch', 'provide IMAGE_ID at TARGET'),
                           ('explain', 'dry run: every handler\'s verdict, nothing written')):
        p = sub.add_parser(name, parents=[common], help=helptext)
        p.add_argument('image_id')
        p.add_argument('target', help='a file path, or rbd:POOL/NAME')
        p.add_argument('--purpose', default='spawn',
                       help='why the disk is needed (spawn, rescue, unshelve, '
                            'live_migration)')
        p.add_argument('--size', type=int, default=None,
                       help='requested disk size in bytes (RBD targets are resized)')
        p.add_argument('--disk-format', choices=['raw', 'qcow2'], default='raw',
                       help='how a file target will be used: raw (the image\'s bytes, '
                            'like Nova\'s _base) or qcow2 (an instance disk that may '
                            'be an overlay backed by the image)')
        p.add_argument('--trusted-cert', action='append', default=[],
                       metavar='CERT_ID',
                       help='a trusted certificate id in the key manager, as an '
                            'instance\'s trusted_image_certificates (repeatable): '
                            'the image\'s signature is then checked on every path '
                            'and its signing certificate must chain to one of them')
        if name == 'fetch':
            _add_no_progress(p)
        p.add_argument('--images-type', default=None, metavar='IMAGES_TYPE',
                       help='Nova\'s image backend (rbd, qcow2, flat, raw, ...) whose '
                            'handler order applies ([image_handlers] '
                            'images_type_handlers); default: [libvirt] images_type '
                            'of the config ("default": qcow2, or flat without '
                            'use_cow_images)')
    p = sub.add_parser('copy', parents=[common], help='stream SOURCE_URL to TARGET')
    p.add_argument('source_url')
    p.add_argument('target')
    p.add_argument('--checksum', help='ALGO:HEX, e.g. sha256:0123...')
    _add_no_progress(p)
    sub.add_parser('handlers', parents=[common],
                   help='installed handlers and the enabled order per hypervisor')
    p = sub.add_parser('cleanup', parents=[common],
                       help='remove partial copies nobody will resume (image gone, '
                            'or older than partial_max_age) and partial RBD clones '
                            'no request works on; never a running one')
    p.add_argument('directories', nargs='*', metavar='DIR',
                   help='where the partials are (default: [image_handlers] '
                        'cleanup_dirs)')
    p.add_argument('--older-than', type=float, default=None, metavar='SECONDS',
                   help='remove partials not resumed for this long (default: '
                        '[image_handlers] partial_max_age; 0: any age)')
    p.add_argument('--dry-run', action='store_true',
                   help='say what would be removed, remove nothing')
    p = sub.add_parser('jobs', parents=[common],
                       help='work that goes on after a disk was provided (fills)')
    p.add_argument('action', choices=['list', 'show', 'wait', 'cancel', 'resume'])
    p.add_argument('job_id', nargs='?')
    p.add_argument('--timeout', type=float, default=None,
                   help='with wait: give up after this many seconds (exit 1)')
    _add_no_progress(p)
    return parser


def _add_no_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument('--no-progress', action='store_true',
                   help='no progress bar (one is drawn on stderr only when it is '
                        'a terminal)')


def _progress_bar(args) -> cli_progress.Bar:
    return cli_progress.Bar(enabled=False if args.no_progress else None)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.config_file = args.config_file_before + args.config_file
    args.config_dir = args.config_dir_before + args.config_dir
    try:
        conf = api.make_conf(args.config_file, args.config_dir)
        if args.command in NEEDS_GLANCE:
            _require_config(conf)
        if args.debug:
            conf.set_override('debug', True)
        # stdout carries the result only (--json must parse); logs go to stderr.
        conf.set_override('use_stderr', True)
        logging.setup(conf, 'image_handlers')
        return _COMMANDS[args.command](conf, args)
    except exceptions.BadInput as exc:
        return _fail(args, EXIT_BAD_INPUT, exc)
    except exceptions.NoHandlerAvailable as exc:
        if args.json and exc.result is not None:
            print(json.dumps(exc.result.to_dict(), indent=2))
        else:
            if exc.result is not None:
                _print_result(exc.result)
            print(f'error: {exc}', file=sys.stderr)
        return EXIT_NO_HANDLER
    except exceptions.ImageHandlerError as exc:
        return _fail(args, EXIT_NO_HANDLER, exc)
    except Exception as exc:  # a config file that does not parse, and the like
        from oslo_config import cfg
        if isinstance(exc, cfg.Error):
            return _fail(args, EXIT_BAD_INPUT, exc)
        raise


def _require_config(conf) -> None:
    """ConfigError when no file was given and oslo.config found none of Nova's
    (~/.nova/, ~/, /etc/nova/, /etc/ nova.conf, nova.conf.d): Glance's endpoint and
    credentials would be missing, and keystoneauth says only "An auth plugin is
    required to determine endpoint URL"."""
    if not conf.config_file and not conf.config_dir:
        raise exceptions.ConfigError(
            f'no configuration: {DEFAULT_CONFIG} does not exist; pass --config-file '
            f'PATH (a nova.conf with [glance] and [image_handlers])')


def _fail(args, code: int, exc: Exception) -> int:
    if getattr(args, 'json', False):
        print(json.dumps({'error': str(exc), 'error_type': type(exc).__name__}))
    print(f'error: {exc}', file=sys.stderr)
    return code


def _fetch(conf, args) -> int:
    with _progress_bar(args) as bar, bar.copies():
        result = api.fetch(conf, args.image_id, args.target, args.virt_driver,
                           args.purpose, args.size, args.disk_format,
                           trusted_certs=args.trusted_cert,
                           images_type=_images_type(conf, args))
    _emit(args, result)
    return EXIT_OK


def _explain(conf, args) -> int:
    result = api.explain(conf, args.image_id, args.target, args.virt_driver,
                         args.purpose, args.size, args.disk_format,
                         trusted_certs=args.trusted_cert,
                         images_type=_images_type(conf, args))
    _emit(args, result)
    return EXIT_OK if result.handler else EXIT_NO_HANDLER


def _images_type(conf, args) -> str | None:
    """--images-type, else the config's [libvirt] images_type ("default" resolved)."""
    return ih_conf.effective_images_type(conf, args.images_type or None)


def _copy(conf, args) -> int:
    """A stream copy without Glance, reported like a fetch by stream_copy."""
    start = time.monotonic()
    location = redact_url(args.source_url)
    result = FetchResult(image_id=None, target=args.target)
    try:
        with _progress_bar(args) as bar, bar.copies():
            copied = api.copy(conf, args.source_url, args.target, args.checksum).wait()
    except exceptions.BadInput:
        raise
    except exceptions.ImageHandlerError as exc:
        result.attempts.append(Attempt(COPY_HANDLER, location, FAILED, str(exc)))
        result.seconds = time.monotonic() - start
        if args.json:
            print(json.dumps(result.to_dict(), indent=2))
        print(f'error: {exc}', file=sys.stderr)
        return EXIT_NO_HANDLER
    provided = Provided.from_copy(copied)
    result.attempts.append(Attempt(COPY_HANDLER, location, USED,
                                   provided.verified or 'no checksum given'))
    result.use(COPY_HANDLER, location, provided)
    result.seconds = time.monotonic() - start
    _emit(args, result)
    return EXIT_OK


def _handlers(conf, args) -> int:
    installed = ih_chain.installed_handlers()
    group = conf[ih_conf.GROUP]
    orders = {'(default)': ih_conf.handler_order(conf, None)}
    for driver in sorted(group.virt_driver_handlers):
        orders[driver] = ih_conf.handler_order(conf, driver)
    for backend in sorted(group.images_type_handlers):
        orders[f'images_type {backend}'] = ih_conf.handler_order(conf, None, backend)
    if args.json:
        print(json.dumps({'installed': installed, 'enabled': orders}, indent=2))
        return EXIT_OK
    print('installed handlers: ' + (', '.join(installed) or 'none'))
    for driver, names in orders.items():
        marks = [n if n in installed else f'{n} (NOT INSTALLED)' for n in names]
        print(f'enabled for {driver}: {" -> ".join(marks)}')
    return EXIT_OK


def _jobs(conf, args) -> int:
    from image_handlers.jobs import runner
    if args.action in ('show', 'wait', 'cancel') and not args.job_id:
        raise exceptions.BadInput(f'jobs {args.action} needs a job id (see "jobs list")')
    if args.action == 'list':
        jobs = runner.store(conf).all()
    elif args.action == 'resume':
        jobs = ([runner.retry(conf, args.job_id)] if args.job_id
                else runner.resume_orphans(conf))
    elif args.action == 'show':
        jobs = [runner.store(conf).get(args.job_id)]
    elif args.action == 'cancel':
        jobs = [runner.cancel(conf, args.job_id)]
    else:
        try:
            with _progress_bar(args) as bar:
                jobs = [runner.wait(conf, args.job_id, args.timeout, watch=bar.job())]
        except TimeoutError as exc:
            print(f'error: {exc}', file=sys.stderr)
            return EXIT_NO_HANDLER
    if args.json:
        print(json.dumps([j.to_dict() for j in jobs], indent=2))
    else:
        for j in jobs:
            total = f'/{j.total_bytes}' if j.total_bytes else ''
            print(f'{j.id} {j.kind:<13} {j.state:<9} {j.done_bytes}{total} bytes  '
                  f'{j.description}' + (f'\n    error: {j.error}' if j.error else ''))
    failed = [j for j in jobs if j.state == 'failed']
    return EXIT_NO_HANDLER if args.action == 'wait' and failed else EXIT_OK


def _cleanup(conf, args) -> int:
    done = api.cleanup(conf, args.directories, args.older_than, args.dry_run)
    if args.json:
        print(json.dumps(done.to_dict(), indent=2))
        return EXIT_NO_HANDLER if done.errors else EXIT_OK
    verb = 'would remove' if done.dry_run else 'removed'
    for leftover in done.leftovers:
        what = verb if leftover.removed else leftover.outcome
        print(f'{what:<12} {leftover.partial} ({leftover.size} bytes, '
              f'{leftover.age:.0f} s old): {leftover.reason}')
    print(f'{verb} {len(done.removed)} partial cop{"y" if len(done.removed) == 1 else "ies"}'
          f', {done.freed} bytes; {len(done.leftovers) - len(done.removed)} kept')
    for error in done.errors:
        print(f'image-handlers: not swept: {error}', file=sys.stderr)
    return EXIT_NO_HANDLER if done.errors else EXIT_OK


_COMMANDS = {'fetch': _fetch, 'explain': _explain, 'copy': _copy,
             'handlers': _handlers, 'jobs': _jobs, 'cleanup': _cleanup}


def _emit(args, result: FetchResult) -> None:
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        _print_result(result)


def _print_result(result: FetchResult) -> None:
    verb = 'would use' if result.dry_run else 'used'
    print(f'image {result.image_id or "-"} -> {result.target}')
    if result.handler:
        extra = '' if result.dry_run else (
            f', {result.bytes_copied} bytes copied in {result.seconds:.2f} s, '
            f'{result.disk_format} disk')
        print(f'  {verb}: {result.handler} ({result.method}) from {result.location} '
              f'(zero_copy={"yes" if result.zero_copy else "no"}{extra})')
        if result.verified:
            print(f'  verified: {result.verified}')
        if result.depends_on:
            dep = result.depends_on
            print(f'  depends on: {dep.source} ({dep.kind}), kept alive by {dep.pin}, '
                  f'until {dep.until}')
        if result.job:
            print(f'  job: {result.job} goes on (image-handlers jobs show {result.job})')
    else:
        print('  no handler can provide this image')
    for source in result.details.get('location_sources', []):
        print(f'  locations: {source}')
    print('  attempts:')
    for a in result.attempts:
        print(f'    {a.outcome:<8} {a.handler:<12} {a.location or "-"}')
        print(f'             {a.reason}')
        if a.details.get('rank'):  # explain: speed and recent failures here
            print(f'             rank: {a.details["rank"]}')


if __name__ == '__main__':
    sys.exit(main())
