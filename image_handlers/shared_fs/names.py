"""Image ids used as file names (verdict files, pins): never a path, never hidden."""
from __future__ import annotations


def file_name_of(image_id: str, what: str) -> str:
    """``image_id`` itself when it can name a file in a directory of ours; else
    ValueError naming ``what`` it was to name."""
    if (not isinstance(image_id, str) or not image_id or image_id.startswith('.')
            or '/' in image_id or '\x00' in image_id):
        raise ValueError(f'image id {image_id!r} cannot name {what}')
    return image_id
