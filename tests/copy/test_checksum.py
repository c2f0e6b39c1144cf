import hashlib

import pytest

from image_handlers import exceptions
from image_handlers.copy import Checksum


def test_parse_and_str_round_trip():
    digest = hashlib.sha512(b'x').hexdigest()
    checksum = Checksum.parse(f'SHA512:{digest.upper()}')
    assert checksum.algo == 'sha512'
    assert checksum.hexdigest == digest
    assert str(checksum) == f'sha512:{digest}'
    assert Checksum.parse(str(checksum)) == checksum


def test_md5_and_other_fixed_size_algorithms():
    for algo in ('md5', 'sha256', 'sha3_256', 'blake2b'):
        digest = hashlib.new(algo, b'abc').hexdigest()
        checksum = Checksum(algo, digest)
        hasher = checksum.new()
        hasher.update(b'abc')
        assert hasher.hexdigest() == checksum.hexdigest


@pytest.mark.parametrize('text, words', [
    ('', ['ALGORITHM:HEXDIGEST']),
    ('sha512', ['ALGORITHM:HEXDIGEST']),
    (':abcd', ['ALGORITHM:HEXDIGEST']),
    ('nosuchalgo:abcd', ['unknown checksum algorithm', 'nosuchalgo']),
    ('sha256:abcd', ['64 hexadecimal digits', 'got 4']),
    ('md5:' + 'z' * 32, ['malformed md5 checksum']),
    ('shake_128:' + 'a' * 32, ['no fixed digest length']),
])
def test_parse_errors_say_what_is_wrong(text, words):
    with pytest.raises(exceptions.BadInput) as err:
        Checksum.parse(text)
    for word in words:
        assert word in str(err.value)
