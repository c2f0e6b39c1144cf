"""Uploading the scenarios' image into one Glance store with tempest's own image
client (no cloud-specific client): a private RAW image, its bytes sent with
multi-store's ``X-Image-Meta-Store`` header, checked active and in that store."""
from __future__ import annotations

import functools

CHUNK = 1024 * 1024


class UploadError(AssertionError):
    """Glance did not keep the image where the scenario asked."""


def upload_raw(image_client, admin_image_client, path: str, store: str,
               name: str, on_created=None) -> dict:
    """Create and upload the image; the admin's view of its record (locations).
    ``on_created(image_id)`` is called as soon as the image exists (to delete it
    afterwards, whatever happens next)."""
    image = image_client.create_image(name=name, container_format='bare',
                                      disk_format='raw', visibility='private')
    if on_created is not None:
        on_created(image['id'])
    _put_file(image_client, image['id'], path, store)
    record = admin_image_client.show_image(image['id'])
    if record.get('status') != 'active':
        raise UploadError(f'image {image["id"]} is {record.get("status")!r} after '
                          f'its upload, not active')
    stores = [s for s in (record.get('stores') or '').split(',') if s]
    if store and store not in stores:
        raise UploadError(f'image {image["id"]} is in stores {stores}, not in {store}')
    return record


def _put_file(image_client, image_id: str, path: str, store: str) -> None:
    headers = {'Content-Type': 'application/octet-stream'}
    if store:
        headers['X-Image-Meta-Store'] = store
    with open(path, 'rb') as f:
        body = iter(functools.partial(f.read, CHUNK), b'')
        resp, _ = image_client.request('PUT', f'images/{image_id}/file',
                                       headers=headers, body=body, chunked=True)
    image_client.expected_success(204, resp.status)
