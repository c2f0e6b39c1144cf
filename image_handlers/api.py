"""The Python API: the same semantics as the ``image-handlers`` command.

    from image_handlers import api
    conf = api.make_conf(['/etc/nova/nova.conf'])
    result = api.fetch(conf, IMAGE_ID, '/var/lib/nova/instances/_base/x')
    print(result.to_dict())
    task = api.copy(conf, 'http://host/img.raw', '/tmp/img.raw', checksum='sha256:...')
    ...  # other work
    task.wait()
"""
from __future__ import annotations

from oslo_config import cfg
from oslo_log import log as logging

from image_handlers import conf as ih_conf
from image_handlers import copy as copy_engine
from image_handlers.chain import HandlerChain
from image_handlers.copy.conf import copy_options
from image_handlers.results import FetchResult
from image_handlers.targets import FileTarget, parse_target
from image_handlers import exceptions


def make_conf(config_files: list[str] | None = None,
              config_dirs: list[str] | None = None,
              setup_logging: bool = False) -> cfg.ConfigOpts:
    """A ConfigOpts with our options and Nova's [glance] options, loaded from files."""
    conf = cfg.ConfigOpts()
    ih_conf.register_opts(conf)
    logging.register_options(conf)
    args: list[str] = []
    for path in config_files or []:
        _check_readable(path)
        args += ['--config-file', path]
    for path in config_dirs or []:
        args += ['--config-dir', path]
    conf(args=args, project='nova', default_config_files=[] if args else None,
         default_config_dirs=[] if args else None)
    if setup_logging:
        logging.setup(conf, 'image_handlers')
    return conf


def _check_readable(path: str) -> None:
    """ConfigError naming a given config file that cannot be read (oslo.config's
    own error for a directory or an unreadable file is a bare OSError)."""
    try:
        with open(path, 'rb'):
            pass
    except FileNotFoundError:
        raise exceptions.ConfigError(
            f'config file {path} does not exist (--config-file)') from None
    except OSError as exc:
        raise exceptions.ConfigError(
            f'cannot read config file {path} (--config-file): '
            f'{exc.strerror or exc}') from None


def fetch(conf: cfg.ConfigOpts, image_id: str, target: str, virt_driver: str = 'libvirt',
          purpose: str = 'spawn', size: int | None = None,
          disk_format: str = 'raw',
          trusted_certs: list[str] | None = None,
          images_type: str | None = None) -> FetchResult:
    """Provide ``image_id`` at ``target`` (a path, or rbd:POOL/NAME) to be used as a
    ``disk_format`` disk; raises NoHandlerAvailable with every reason, Untrusted
    when no path could trust the image (``trusted_certs``: an instance's trusted
    certificate ids). ``images_type``: Nova's image backend whose handler order
    applies ([image_handlers] images_type_handlers)."""
    chain = HandlerChain(conf, virt_driver=virt_driver, images_type=images_type)
    return chain.fetch(chain.request(image_id, parse_target(target, disk_format),
                                     purpose, size, trusted_certs=trusted_certs))


def explain(conf: cfg.ConfigOpts, image_id: str, target: str,
            virt_driver: str = 'libvirt', purpose: str = 'spawn',
            size: int | None = None, disk_format: str = 'raw',
            trusted_certs: list[str] | None = None,
            images_type: str | None = None) -> FetchResult:
    """Every handler's verdict for every location; writes nothing."""
    chain = HandlerChain(conf, virt_driver=virt_driver, images_type=images_type)
    return chain.explain(chain.request(image_id, parse_target(target, disk_format),
                                       purpose, size, trusted_certs=trusted_certs))


def copy(conf: cfg.ConfigOpts, source_url: str, target: str,
         checksum: str | None = None) -> copy_engine.CopyTask:
    """Start the stream copy of ``source_url`` to ``target`` without Glance.

    Returns at once with a task: ``task.wait()`` gives the CopyResult or raises.
    """
    tgt = parse_target(target)
    if not isinstance(tgt, FileTarget):
        raise exceptions.InvalidTarget(
            f'copy writes local files only, not {target!r}')
    if not source_url.lower().startswith(('http://', 'https://')):
        raise exceptions.InvalidLocation(
            f'copy reads http:// or https:// URLs, not {source_url!r}')
    tgt.check_writable()
    parsed = copy_engine.Checksum.parse(checksum) if checksum else None
    return copy_engine.copy(copy_engine.HttpSource(source_url), tgt.path,
                            checksum=parsed, options=copy_options(conf[ih_conf.GROUP]),
                            description=f'copy of {source_url}')


def cleanup(conf: cfg.ConfigOpts, directories: list[str] | None = None,
            older_than: float | None = None, dry_run: bool = False):
    """Remove partial copies nobody will resume (``image_handlers.cleanup``): the
    image is gone from Glance (asked with nova.conf's [glance]; unknown when Glance
    cannot be asked), or not resumed for ``older_than`` seconds (default
    ``partial_max_age``); and what the enabled handlers' failed requests left
    elsewhere (rbd_clone's partial clones). Returns the Sweep."""
    from image_handlers import cleanup as sweeper
    from image_handlers.chain import load_handlers
    from image_handlers.handlers.base import Handler
    group = conf[ih_conf.GROUP]
    dirs = list(directories or group.cleanup_dirs)
    sweeping = [h for h in load_handlers(conf, list(group.handlers))
                if type(h).leftovers is not Handler.leftovers]
    if not dirs and not sweeping:
        raise exceptions.BadInput(
            'no directory to clean: name them (image-handlers cleanup DIR ...) or '
            'set [image_handlers] cleanup_dirs')
    max_age = (sweeper.max_age_of(group.partial_max_age) if older_than is None
               else max(0.0, older_than))
    done = (sweeper.sweep(dirs, sweeper.glance_asker(conf), max_age, dry_run,
                          lock_dir=copy_options(group).lock_dir)
            if dirs else sweeper.Sweep([], dry_run))
    return sweeper.sweep_handlers(done, sweeping)
