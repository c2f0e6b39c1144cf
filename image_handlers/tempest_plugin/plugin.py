"""Tempest plugin of image_handlers (entry point ``tempest.test_plugins``).

Tempest's plugin manager loads it with stevedore; it adds the
``[image_handlers]`` group and points tempest's test loader at ``tests/``. It
imports nothing that needs the cloud or Ceph's bindings (the storage-side
checks import rados/rbd when a scenario runs).
"""
from __future__ import annotations

import os

from tempest.test_discover import plugins

from image_handlers.tempest_plugin import config as ih_config


class ImageHandlersTempestPlugin(plugins.TempestPlugin):

    def load_tests(self) -> tuple[str, str]:
        """(directory of the tests, top-level directory they import from)."""
        here = os.path.dirname(os.path.abspath(__file__))
        top = os.path.dirname(os.path.dirname(here))
        return os.path.join(here, 'tests'), top

    def register_opts(self, conf) -> None:
        conf.register_group(ih_config.group)
        conf.register_opts(ih_config.opts, group=ih_config.group)

    def get_opt_lists(self) -> list[tuple[str, list]]:
        return [(ih_config.group.name, ih_config.opts)]
