"""The chain's own behaviour, with small handlers written for these tests.

Order, laziness, fallback, the WARNING on a full copy after a zero-copy handler was
passed over, outcomes and reasons: real chain code, no Ceph or Glance needed. The
handlers here are real Handler subclasses whose decide/act do what each test needs.
"""
from __future__ import annotations

import logging

import pytest
from oslo_config import cfg

from image_handlers import conf as ih_conf
from image_handlers import exceptions
from image_handlers.chain import HandlerChain
from image_handlers.handlers.base import Decision, Handler, Refused
from image_handlers.image import ImageInfo
from image_handlers.locations import parse_location
from image_handlers.results import (ELIGIBLE, FAILED, SHARED_FILE, SKIPPED, USED,
                                    Dependency, Provided)
from image_handlers.targets import FILE, RBD, FileTarget


class Source:
    """An ImageSource holding records in memory."""

    endpoint = 'http://glance.invalid'

    def __init__(self, *images: ImageInfo) -> None:
        self.images = {i.id: i for i in images}

    def get_image(self, image_id: str) -> ImageInfo:
        try:
            return self.images[image_id]
        except KeyError:
            raise exceptions.ImageNotFound(f'no image {image_id}') from None

    def auth_headers(self) -> dict[str, str]:
        return {}


class Scripted(Handler):
    """A handler whose verdicts and results come from the test."""

    target_kinds = frozenset({FILE})
    schemes = frozenset({'http'})

    def __init__(self, conf, name, *, refuse=None, fail=None, zero_copy=False,
                 provided=None, kinds=None, decide_error=None):
        super().__init__(conf)
        self.name = name
        self.zero_copy = zero_copy
        self.refuse, self.fail, self.decide_error = refuse, fail, decide_error
        self.provided = provided or Provided(method='copy', bytes_copied=100)
        if kinds:
            self.target_kinds = frozenset(kinds)
        self.decided: list[str] = []
        self.acted: list[str] = []

    def decide(self, request, location):
        self.decided.append(location.url)
        if self.decide_error:
            raise self.decide_error
        if self.refuse:
            raise Refused(self.refuse)
        return Decision(f'{self.name} can', method=self.provided.method)

    def act(self, request, location, decision):
        self.acted.append(location.url)
        if self.fail:
            raise self.fail
        return self.provided


@pytest.fixture
def conf(tmp_path):
    c = cfg.ConfigOpts()
    ih_conf.register_opts(c)
    c(args=[])
    c.set_override('state_dir', str(tmp_path / 'state'), ih_conf.GROUP)
    return c


def image(*urls, metadata=None, **fields) -> ImageInfo:
    fields.setdefault('size', 100)
    fields.setdefault('checksum', '0' * 32)
    return ImageInfo(id='img-1', status='active', locations=[
        parse_location(u, (metadata or {}).get(u), i) for i, u in enumerate(urls)],
        **fields)


def chain_of(conf, img, *handlers):
    return HandlerChain(conf, glance=Source(img), handlers=list(handlers))


def run(conf, img, *handlers, target='/tmp/never-written'):
    ch = chain_of(conf, img, *handlers)
    return ch.fetch(ch.request(img.id, FileTarget(kind=FILE, path=target)))


def test_first_handler_that_accepts_acts_and_later_ones_are_not_asked(conf):
    first = Scripted(conf, 'first', refuse='not mine')
    second = Scripted(conf, 'second')
    third = Scripted(conf, 'third')
    result = run(conf, image('http://a/x'), first, second, third)
    assert result.handler == 'second' and result.method == 'copy'
    assert [(a.handler, a.outcome, a.reason) for a in result.attempts] == [
        ('first', SKIPPED, 'not mine'), ('second', USED, 'second can')]
    assert third.decided == [] and first.acted == []     # lazy: nobody asked after


def test_a_failed_act_moves_to_the_next_handler_with_the_error_as_reason(conf):
    broken = Scripted(conf, 'broken', fail=OSError(5, 'I/O error'))
    backup = Scripted(conf, 'backup')
    result = run(conf, image('http://a/x'), broken, backup)
    assert result.handler == 'backup'
    assert [(a.handler, a.outcome) for a in result.attempts] == [
        ('broken', FAILED), ('backup', USED)]
    assert 'OSError' in result.attempts[0].reason and 'I/O error' in result.attempts[0].reason


def test_each_location_is_asked_in_rank_order_until_one_is_accepted(conf):
    picky = Scripted(conf, 'picky', refuse='no')
    img = image('http://a/x', 'http://b/x',
                metadata={'http://b/x': {'weight': 5}})
    with pytest.raises(exceptions.NoHandlerAvailable):
        run(conf, img, picky)
    assert picky.decided == ['http://b/x', 'http://a/x']    # weight 5 first


def test_no_handler_lists_every_reason_and_keeps_the_result(conf):
    a = Scripted(conf, 'a', refuse='reason A')
    b = Scripted(conf, 'b', kinds={RBD})
    with pytest.raises(exceptions.NoHandlerAvailable) as err:
        run(conf, image('http://a/x', 'gopher://old/x'), a, b)
    text = str(err.value)
    assert 'reason A' in text and 'cannot produce a file target' in text
    assert "unknown location scheme 'gopher'" in text
    result = err.value.result
    assert [a.outcome for a in result.attempts] == [SKIPPED] * 3
    assert not result.succeeded


def test_a_handler_without_locations_of_its_scheme_says_so(conf):
    reader = Scripted(conf, 'reader')
    reader.schemes = frozenset({'rbd'})
    with pytest.raises(exceptions.NoHandlerAvailable) as err:
        run(conf, image('http://a/x'), reader)
    assert "no rbd location among the image's 1 location(s)" in str(err.value)
    assert 'no enabled handler reads http locations' in str(err.value)


def test_decide_errors_are_refusals_but_bad_input_stops_the_chain(conf):
    flaky = Scripted(conf, 'flaky', decide_error=exceptions.SourceError('timeout'))
    after = Scripted(conf, 'after')
    result = run(conf, image('http://a/x'), flaky, after)
    assert result.attempts[0].reason == 'could not decide: timeout'
    assert result.handler == 'after'

    guard = Scripted(conf, 'guard', decide_error=exceptions.TargetExists('exists'))
    never = Scripted(conf, 'never')
    with pytest.raises(exceptions.TargetExists):
        run(conf, image('http://a/x'), guard, never)
    assert never.decided == []

    rude = Scripted(conf, 'rude', fail=exceptions.InvalidTarget('bad target'))
    with pytest.raises(exceptions.InvalidTarget):
        run(conf, image('http://a/x'), rude, Scripted(conf, 'unused'))


def test_full_copy_after_a_zero_copy_handler_was_passed_over_warns(conf, caplog):
    caplog.set_level(logging.INFO)
    zero = Scripted(conf, 'zero', refuse='different file system', zero_copy=True)
    full = Scripted(conf, 'full', provided=Provided(method='copy', bytes_copied=4096))
    result = run(conf, image('http://a/x'), zero, full)
    assert not result.zero_copy and result.bytes_copied == 4096
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any('as a FULL COPY (4096 bytes)' in m and 'zero: different file system'
               in m for m in warnings), warnings


def test_a_full_copy_with_no_zero_copy_handler_passed_over_does_not_warn(conf, caplog):
    caplog.set_level(logging.INFO)
    run(conf, image('http://a/x'), Scripted(conf, 'x', refuse='no'),
        Scripted(conf, 'full'))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_the_result_says_what_the_disk_depends_on(conf):
    dep = Dependency(SHARED_FILE, '/mnt/images/img-1', pin='hardlink /p (inode 7)',
                     until='the disk is deleted')
    overlay = Scripted(conf, 'overlay', zero_copy=True, provided=Provided(
        method='overlay', bytes_copied=0, disk_format='qcow2', depends_on=dep,
        job='job-1', verified='sha512:ab (verdict reused)'))
    out = run(conf, image('http://a/x'), overlay).to_dict()
    assert out['zero_copy'] is True and out['bytes_copied'] == 0
    assert out['disk_format'] == 'qcow2' and out['method'] == 'overlay'
    assert out['depends_on'] == {'kind': 'shared_file', 'source': '/mnt/images/img-1',
                                 'pin': 'hardlink /p (inode 7)',
                                 'until': 'the disk is deleted'}
    assert out['job'] == 'job-1' and out['complete'] is False
    assert out['verified'] == 'sha512:ab (verdict reused)'


def test_explain_walks_the_same_verdicts_and_acts_on_nothing(conf):
    a = Scripted(conf, 'a', refuse='reason A', zero_copy=True)
    b = Scripted(conf, 'b')
    c = Scripted(conf, 'c')
    ch = chain_of(conf, image('http://a/x'), a, b, c)
    req = ch.request('img-1', FileTarget(kind=FILE, path='/tmp/never'))
    explained = ch.explain(req)
    assert [(x.handler, x.outcome, x.reason) for x in explained.attempts] == [
        ('a', SKIPPED, 'reason A'), ('b', ELIGIBLE, 'b can'), ('c', ELIGIBLE, 'c can')]
    assert (explained.handler, explained.method, explained.dry_run) == ('b', 'copy', True)
    assert a.acted == b.acted == c.acted == []
    fetched = ch.fetch(req)
    assert [x.reason for x in fetched.attempts] == ['reason A', 'b can']


def test_unknown_image_is_bad_input(conf):
    ch = chain_of(conf, image('http://a/x'), Scripted(conf, 'a'))
    with pytest.raises(exceptions.ImageNotFound):
        ch.request('other', FileTarget(kind=FILE, path='/tmp/never'))


class FailsOn(Scripted):
    """Fails acting on the given URLs with the given error, serves the others."""

    def __init__(self, conf, name, errors):
        super().__init__(conf, name)
        self.errors = errors

    def act(self, request, location, decision):
        self.acted.append(location.url)
        if location.url in self.errors:
            raise self.errors[location.url]
        return self.provided


def test_a_location_that_failed_is_tried_after_healthy_ones_and_explain_says_so(conf):
    img = image('http://a/x', 'http://b/x')
    flaky = FailsOn(conf, 'flaky', {'http://a/x': exceptions.SourceError('HTTP 500')})
    result = run(conf, img, flaky)
    assert [(a.location, a.outcome) for a in result.attempts] == [
        ('http://a/x', FAILED), ('http://b/x', USED)]

    ch = chain_of(conf, img, FailsOn(conf, 'flaky', {}))
    out = ch.explain(ch.request(img.id, FileTarget(kind=FILE, path='/tmp/never')))
    assert out.location == 'http://b/x'       # the healthy one first now
    assert [a.location for a in out.attempts] == ['http://b/x', 'http://a/x']
    failed = out.attempts[1].to_dict()['details']
    assert failed['recent_failures'] == 1 and failed['mib_per_s'] is None
    assert 'failed 1x recently' in failed['rank']
    assert out.attempts[0].details['recent_failures'] == 0


def test_failures_that_say_nothing_about_the_location_are_not_recorded(conf):
    img = image('http://a/x', 'http://b/x')
    full = FailsOn(conf, 'full', {'http://a/x': exceptions.DiskFull('no space')})
    run(conf, img, full)
    ch = chain_of(conf, img, FailsOn(conf, 'full', {}))
    out = ch.explain(ch.request(img.id, FileTarget(kind=FILE, path='/tmp/never')))
    assert out.location == 'http://a/x'
    assert all(a.details['recent_failures'] == 0 for a in out.attempts)
