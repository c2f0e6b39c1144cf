"""What Glance answers to copy-image, as rbd_import reads it (glance_import)."""
import pytest

from image_handlers import glance_import
from image_handlers.glance_import import BUSY, PRESENT, CopyRefused, classify


def test_busy_present_refused():
    # Glance 33's own words (measured on the lab)
    assert classify(409, 'HTTP 409 Conflict: Image has active task') == BUSY
    assert classify(409, "HTTP 409 Conflict: New operation on image 'X' is not "
                         "permitted as prior operation is still in progress") == BUSY
    assert classify(400, "HTTP 400 Bad Request: Image is already present at store "
                         "'local'") == PRESENT
    for status, text in ((409, 'Store for identifier nope not found'),
                         (409, 'Only images with status active can be targeted for '
                               'copying'),
                         (403, 'You are not authorized to complete copy_image action.'),
                         (413, 'quota exceeded')):
        with pytest.raises(CopyRefused, match=text.split()[0]):
            classify(status, text)


def test_nova_messages():
    # Nova's ImageImportImpossible / ImageBadRequest wrap Glance's text
    assert classify(409, 'Import of image X refused: HTTP 409 Conflict: Image has '
                         'active task') == BUSY
    assert classify(400, 'Request of image X got BadRequest response: HTTP 400 Bad '
                         'Request: Image is already present at store') == PRESENT


def test_store_lists():
    assert glance_import.store_list('fs,local') == ['fs', 'local']
    assert glance_import.store_list('') == [] and glance_import.store_list(None) == []
    assert glance_import.store_list(['a', 'b']) == ['a', 'b']
    info = {'stores': [{'id': 'fs', 'default': 'true'}, {'id': 'web', 'read-only': 'true'}]}
    assert set(glance_import.store_ids(info)) == {'fs', 'web'}
    assert glance_import.import_methods(
        {'import-methods': {'value': ['glance-direct', 'copy-image']}}) == [
            'glance-direct', 'copy-image']
    assert glance_import.import_methods({}) is None
