"""Compress an image so the copy engine can resume it: independent frames.

    .venv/bin/python -m tools.compress_image IMAGE OUT.zst [--frame-size 8M] [--level 3]
    .venv/bin/python -m tools.compress_image IMAGE OUT.gz --codec gzip

zstd: the seekable format (pyzstd.SeekableZstdFile): frames of --frame-size
decompressed bytes, each with its content checksum, then a seek table in a
skippable frame that plain zstd readers ignore. gzip: one member per frame
(multi-member gzip, RFC 1952; ``gunzip`` reads it as one file). An interrupted
copy re-fetches at most one frame, so smaller frames resume cheaper and
compress a little worse (bench/bench_compressed.py measures both).

Publish it as an http location of the image with location metadata
``{"compression": "zstd"}`` (or gzip); the image's size, checksum and
os_hash_value stay those of the decompressed image (printed here):

    glance location-add --url http://HOST/OUT.zst \
        --metadata '{"compression": "zstd"}' IMAGE_ID

Writes OUT.tmp, then links it to OUT: never replaces an existing OUT.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import sys

MiB = 1 << 20


@dataclasses.dataclass(frozen=True)
class Compressed:
    path: str
    codec: str
    size: int               # decompressed bytes
    compressed_size: int
    frames: int
    sha256: str             # of the decompressed image
    sha512: str


def compress(src: str, dst: str, codec: str = 'zstd', frame_size: int = 8 * MiB,
             level: int = 3, threads: int = 0) -> Compressed:
    """Write ``src`` compressed in frames of ``frame_size`` bytes to ``dst``."""
    if codec not in ('zstd', 'gzip'):
        raise ValueError(f'codec {codec!r}: use zstd or gzip')
    if frame_size < 64 << 10:
        raise ValueError(f'frame size {frame_size}: use at least 64 KiB')
    if os.path.lexists(dst):
        raise FileExistsError(f'{dst} exists: not replaced; remove it or pick '
                              f'another name')
    tmp = dst + '.tmp'
    sha256, sha512 = hashlib.sha256(), hashlib.sha512()
    size = frames = 0
    try:
        with open(src, 'rb') as fin, open(tmp, 'xb') as fout:
            writer = _writer(codec, fout, frame_size, level, threads)
            while True:
                chunk = fin.read(frame_size)
                if not chunk:
                    break
                sha256.update(chunk)
                sha512.update(chunk)
                writer(chunk)
                size += len(chunk)
                frames += 1
            writer(None)
            fout.flush()
            os.fsync(fout.fileno())
        os.link(tmp, dst)       # publish; fails if dst appeared meanwhile
        os.unlink(tmp)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return Compressed(dst, codec, size, os.path.getsize(dst), frames,
                      sha256.hexdigest(), sha512.hexdigest())


def _writer(codec: str, fout, frame_size: int, level: int, threads: int):
    """A function taking one frame's bytes (None: finish)."""
    if codec == 'zstd':
        import pyzstd
        option = {pyzstd.CParameter.compressionLevel: level,
                  pyzstd.CParameter.checksumFlag: 1}
        if threads:
            option[pyzstd.CParameter.nbWorkers] = threads
        zf = pyzstd.SeekableZstdFile(fout, 'w', level_or_option=option,
                                     max_frame_content_size=frame_size)

        def write(chunk: bytes | None) -> None:
            if chunk is None:
                zf.close()          # the last frame, then the seek table
            else:
                zf.write(chunk)     # a frame ends every frame_size bytes
        return write
    try:
        from isal import igzip as gz
    except ImportError:
        import gzip as gz
    gz_level = min(level, 3) if gz.__name__ == 'isal.igzip' else level

    def write_member(chunk: bytes | None) -> None:
        if chunk is not None:
            fout.write(gz.compress(chunk, gz_level))
    return write_member


def _size(text: str) -> int:
    units = {'k': 1 << 10, 'm': 1 << 20, 'g': 1 << 30}
    text = text.strip().lower().rstrip('ib')
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('image')
    parser.add_argument('output')
    parser.add_argument('--codec', choices=('zstd', 'gzip'), default=None,
                        help='default: from the output name (.gz: gzip), else zstd')
    parser.add_argument('--frame-size', type=_size, default=8 * MiB,
                        help='decompressed bytes per frame (default 8M)')
    parser.add_argument('--level', type=int, default=3)
    parser.add_argument('--threads', type=int, default=0,
                        help='zstd worker threads (0: none)')
    args = parser.parse_args(argv)
    codec = args.codec or ('gzip' if args.output.endswith('.gz') else 'zstd')
    try:
        out = compress(args.image, args.output, codec, args.frame_size, args.level,
                       args.threads)
    except (OSError, ValueError) as exc:
        print(f'compress_image: {exc}', file=sys.stderr)
        return 1
    ratio = out.size / out.compressed_size if out.compressed_size else 0.0
    print(f'{out.path}: {out.codec}, {out.frames} frames of up to '
          f'{args.frame_size} bytes; {out.size} -> {out.compressed_size} bytes '
          f'(ratio {ratio:.2f})')
    print(f'image size {out.size}, sha256 {out.sha256}')
    print(f'sha512 {out.sha512}')
    print(f'location metadata: {{"compression": "{out.codec}"}}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
