"""HTTP caches and mirrors as locations of stream_copy (issue 13).

One image booted on hundreds of hosts must not be pulled from its origin hundreds of
times: a tree of HTTP caches (squid, or any shared cache) or a per-rack mirror serves
the bytes. Each ``[image_handlers] http_cache`` entry is a *route*: for the http
locations it matches (and, only if the operator says so, Glance's data API), on the
hosts it matches, it adds one more location read through that cache or mirror.

A route's location is just another location: ranked by its weight (default: the
origin's + 1, so it goes first), the per-host weights of the location it serves,
the throughput measured here and its recent failures; refused with the reason while
it is unhealthy. The hash check still guards every byte: a cache serving a stale or
truncated object fails the copy, and the chain goes on with the next location (the
origin itself, when it is allowed).

Glance's data API needs a token, and a shared cache keys objects by URL only (the
token header is not part of squid's key), so whoever can reach the cache could read
what a token once fetched. The safe default is to cache the image's http location
(an origin serving image bytes without a per-user token, like Glance's http store);
``glance=yes`` puts the data API behind the cache too, sending the token to it: only
for a cache that compute hosts alone can reach.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import shlex
import urllib.parse

from oslo_config import cfg

from image_handlers import exceptions
from image_handlers.locations import GlanceApiLocation, HttpLocation, Location
from image_handlers.locations.base import redact_url

cache_opts = [
    cfg.MultiStrOpt(
        'http_cache', default=[],
        help='An HTTP cache or mirror that serves image bytes to this host, one '
             'route per line (repeat the option for more): space-separated '
             'key=value pairs. proxy=http://HOST:PORT (a shared HTTP cache such as '
             'squid: absolute-URI GETs, Range and If-Range passed through) or '
             'mirror=URL_PREFIX (the matched part of the location URL is replaced '
             'by it); locations=GLOB[,GLOB] which http(s) location URLs it serves '
             '(default * for a proxy; required for a mirror, each ending in *); '
             'hosts=GLOB[,GLOB] the host group it serves, matched against '
             '[image_handlers] host (default *); weight=N (default: the served '
             'location\'s weight + 1); name=NAME (shown in explain); direct=no '
             'refuses reading the matched locations from their origin (so a fleet '
             'never falls back onto it); glance=yes also reads Glance\'s image data '
             'API through a proxy, SENDING THE TOKEN TO THE CACHE, which keys the '
             'bytes by URL alone: only for a cache that compute hosts alone can '
             'reach. The image hash is checked on every copy, so a stale or '
             'truncated object in a cache fails that copy and the next location is '
             'tried. Example: "name=rack1 proxy=http://10.0.1.2:3128 '
             'hosts=compute-r1-* locations=http://images.example.com/*".'),
]

_KEYS = frozenset({'proxy', 'mirror', 'locations', 'hosts', 'weight', 'name',
                   'direct', 'glance'})
_YES = {'yes': True, 'true': True, 'on': True, '1': True,
        'no': False, 'false': False, 'off': False, '0': False}


@dataclasses.dataclass(frozen=True)
class CacheRoute:
    """One ``http_cache`` entry, parsed and checked."""

    name: str
    proxy: str | None               # http://HOST:PORT of a shared cache
    mirror: str | None              # URL prefix replacing the matched one
    locations: tuple[str, ...]      # globs on location URLs
    hosts: tuple[str, ...]          # globs on this host's name
    weight: int | None              # None: served location's weight + 1
    direct: bool = True             # may the origin be read directly too
    glance: bool = False            # Glance's data API through this proxy, token too

    @classmethod
    def parse(cls, text: str, position: int) -> 'CacheRoute':
        def bad(why: str) -> exceptions.BadInput:
            return exceptions.BadInput(
                f'[image_handlers] http_cache entry {position + 1} ({text!r}): {why}; '
                f'expected e.g. "proxy=http://HOST:PORT locations=http://ORIGIN/* '
                f'hosts=compute-*"')
        fields: dict[str, str] = {}
        try:
            words = shlex.split(text)
        except ValueError as exc:
            raise bad(str(exc)) from None
        for word in words:
            key, sep, value = word.partition('=')
            if not sep or key not in _KEYS:
                raise bad(f'{word!r} is not one of {", ".join(sorted(_KEYS))}=VALUE')
            if key in fields:
                raise bad(f'{key}= given twice')
            fields[key] = value
        proxy, mirror = fields.get('proxy'), fields.get('mirror')
        if bool(proxy) == bool(mirror):
            raise bad('give exactly one of proxy= and mirror=')
        target = proxy or mirror or ''
        parts = urllib.parse.urlsplit(target)
        if parts.scheme not in ('http', 'https') or not parts.hostname:
            raise bad(f'{target!r} is not an http(s) URL')
        if proxy and (parts.path not in ('', '/') or parts.query):
            raise bad(f'proxy {target!r} has a path: give http://HOST:PORT')
        if mirror and not mirror.endswith('/'):
            raise bad(f'mirror {target!r} must end with "/" (it replaces a prefix)')
        locations = _globs(fields.get('locations', '*' if proxy else ''))
        if not locations:
            raise bad('a mirror needs locations=PREFIX* (which URLs it mirrors)')
        if mirror and any(not g.endswith('*') or '*' in g[:-1] or '?' in g
                          or '[' in g for g in locations):
            raise bad('a mirror\'s locations= must be prefixes ending in one "*"')
        weight = None
        if 'weight' in fields:
            try:
                weight = int(fields['weight'])
            except ValueError:
                raise bad(f'weight={fields["weight"]!r} is not an integer') from None
        flags = {}
        for key in ('direct', 'glance'):
            if key in fields:
                if fields[key].lower() not in _YES:
                    raise bad(f'{key}={fields[key]!r}: say yes or no')
                flags[key] = _YES[fields[key].lower()]
        if flags.get('glance') and not proxy:
            raise bad('glance=yes needs a proxy= (Glance\'s API has no mirror)')
        return cls(name=fields.get('name') or parts.netloc, proxy=proxy or None,
                   mirror=mirror or None, locations=locations,
                   hosts=_globs(fields.get('hosts', '*')), weight=weight,
                   direct=flags.get('direct', True), glance=flags.get('glance', False))

    def serves_host(self, host: str) -> bool:
        return any(fnmatch.fnmatchcase(host, g) for g in self.hosts)

    def matches(self, url: str) -> bool:
        return any(fnmatch.fnmatchcase(url, g) for g in self.locations)

    def mirrored_url(self, url: str) -> str:
        for glob in self.locations:
            if fnmatch.fnmatchcase(url, glob):
                return self.mirror + url[len(glob) - 1:]
        raise ValueError(url)


@dataclasses.dataclass(frozen=True)
class CacheLocation(HttpLocation):
    """A location read through a cache or mirror: ``url`` is what is fetched (the
    origin URL for a proxy, the mirror's for a mirror), ``served`` the location of
    the image it stands for."""

    scheme = 'http'
    route: CacheRoute | None = None
    served: Location | None = None

    @property
    def display(self) -> str:
        via = (f'cache {self.route.name} ({redact_url(self.route.proxy)})'
               if self.route.proxy else f'mirror {self.route.name}')
        return f'{self.served.display} via {via}'

    @property
    def endpoint_key(self) -> str:
        """Health and speed are the cache's (one per proxy), or the mirror's."""
        if self.route.proxy:
            return 'http-cache:' + self.route.proxy.rstrip('/')
        return super().endpoint_key

    @property
    def through_proxy(self) -> bool:
        return self.route.proxy is not None


def routes_from_conf(group) -> list[CacheRoute]:
    return [CacheRoute.parse(text, i) for i, text in enumerate(group.http_cache)]


def cache_locations(routes: list[CacheRoute], host: str,
                    listed: list[Location]) -> list[CacheLocation]:
    """One location per (route serving this host, location it matches)."""
    found: list[CacheLocation] = []
    for route in routes:
        if not route.serves_host(host):
            continue
        for loc in listed:
            if isinstance(loc, CacheLocation):
                continue
            if isinstance(loc, GlanceApiLocation):
                if not (route.glance and route.matches(loc.url)):
                    continue
            elif not isinstance(loc, HttpLocation) or not route.matches(loc.url):
                continue
            if route.proxy and loc.url.lower().startswith('https:'):
                continue        # a cache cannot read inside TLS (HttpSource says so)
            url = loc.url if route.proxy else route.mirrored_url(loc.url)
            weight = route.weight if route.weight is not None else loc.weight_for(host) + 1
            parts = urllib.parse.urlsplit(url)
            found.append(CacheLocation(
                url=url, metadata={'weight': weight}, index=loc.index,
                host=(parts.hostname or '').lower(),
                port=parts.port or (443 if parts.scheme == 'https' else 80),
                route=route, served=loc))
    return found


def direct_refused_by(routes: list[CacheRoute], host: str,
                      location: Location) -> CacheRoute | None:
    """The route that forbids reading ``location`` from its origin here, if any."""
    if isinstance(location, CacheLocation):
        return None
    for route in routes:
        if (not route.direct and route.serves_host(host)
                and isinstance(location, HttpLocation) and route.matches(location.url)):
            return route
    return None


def _globs(value: str) -> tuple[str, ...]:
    return tuple(g.strip() for g in value.split(',') if g.strip())
