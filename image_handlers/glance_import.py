"""Asking Glance to copy an image into one of its stores (image import ``copy-image``).

``POST /v2/images/{id}/import`` with ``{"method": {"name": "copy-image"}, "stores":
[store]}``. What Glance 33 answers (measured on the lab, see rbd_import's docstring):

* 202: a task was started; the store appears in ``os_glance_importing_to_stores``
  and, when done, in ``stores`` (with a new location), or in
  ``os_glance_failed_import``;
* 409 "Image has active task": another import of this image holds Glance's per-image
  lock (whatever its store): someone else is copying, wait and ask again later;
  409 "New operation on image X is not permitted as prior operation is still in
  progress" when two requests race for that lock (seen with three hosts at once);
* 400 "Image is already present at store": done already (by someone else);
* 409 "Store for identifier X not found", 409 "Only images with status active can
  be targeted for copying", 403 (the ``copy_image`` policy: admin only by default),
  413 (quota), 404: refused, with Glance's words.

Both image sources (GlanceReader, Nova's image API) turn their client's errors into
the three outcomes below, so the handler reads one vocabulary.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from image_handlers import exceptions

STARTED = 'started'     # Glance accepted: a copy task now runs
BUSY = 'busy'           # another import of this image is running (Glance's lock)
PRESENT = 'present'     # the image is already in that store

COPY_METHOD = 'copy-image'


class CopyRefused(exceptions.SourceError):
    """Glance refused to copy the image (its reason is in the message)."""


def classify(status: int | None, message: str) -> str:
    """STARTED/BUSY/PRESENT from a refused request; raise CopyRefused otherwise."""
    text = message or ''
    if status == 409 and ('active task' in text or 'prior operation is still in '
                                                   'progress' in text):
        return BUSY
    if status == 400 and 'already present' in text:
        return PRESENT
    raise CopyRefused(f'HTTP {status}: {text}' if status else text)


def store_list(value: Any) -> list[str]:
    """Glance gives ``stores`` and its os_glance_* lists as 'a,b' (Nova may give a
    list): a list of names either way."""
    if not value:
        return []
    if isinstance(value, str):
        return [s.strip() for s in value.split(',') if s.strip()]
    return [str(s) for s in value]


def store_ids(info: Mapping[str, Any]) -> dict[str, dict]:
    """``GET /v2/info/stores`` as {store id: its entry}."""
    return {s.get('id'): dict(s) for s in (info or {}).get('stores') or []}


def import_methods(info: Mapping[str, Any]) -> list[str] | None:
    """``GET /v2/info/import``'s enabled methods (None when not given)."""
    methods = (info or {}).get('import-methods') or {}
    value = methods.get('value') if isinstance(methods, Mapping) else None
    return list(value) if value is not None else None


def copy_with_glanceclient(client, image_id: str, store: str) -> str:
    """``images.image_import(image_id, method='copy-image', stores=[store])``."""
    from glanceclient import exc as glance_exc
    try:
        client.images.image_import(image_id, method=COPY_METHOD, stores=[store],
                                   allow_failure=False)
    except glance_exc.HTTPNotFound as exc:
        raise exceptions.ImageNotFound(f'image {image_id}: {exc}')
    except glance_exc.HTTPException as exc:
        return classify(getattr(exc, 'code', None), _message(exc))
    return STARTED


def _message(exc: Exception) -> str:
    import html
    return html.unescape(str(getattr(exc, 'details', None) or exc))
