"""Fixtures that put a Nova test module in the lab's Keystone cloud: import them
into the module (they override the token-stand-in ones of the conftests)::

    from tests.nova.keystone_cloud import context, glance, glance_lab, nova_env  # noqa

(``glance_fs_lab`` and ``glance_fs`` too, for the shared-file-system tests:
glance_ks_lab has a file store on each lab mount.)

Glance is then the one behind the real Keystone (auth_token, catalog), images
belong to alice (project alpha), Nova's CONF is what devstack writes, and the
request context carries alice's token and catalog.
"""
from __future__ import annotations

import pytest


@pytest.fixture
def glance_lab(glance_ks_lab):
    return glance_ks_lab


@pytest.fixture
def glance(glance_ks_lab):
    return glance_ks_lab.keystone_client('alice', 'alpha')


@pytest.fixture
def nova_env(nova_ks_env):
    return nova_ks_env


@pytest.fixture
def context(alice):
    return alice


@pytest.fixture
def glance_fs_lab(glance_ks_lab):
    return glance_ks_lab


@pytest.fixture
def glance_fs(glance_ks_lab):
    return glance_ks_lab.keystone_client('alice', 'alpha')
