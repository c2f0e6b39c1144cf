"""Image records through Nova's own image API, for the chain inside nova-compute.

Nova talks to Glance with the request's credentials (the user's token, plus a
service token when configured), its own endpoint discovery and retries; the
chain does the same by asking Nova's API instead of building a client from
nova.conf, which inside Nova carries no credentials of its own.
"""
from __future__ import annotations

from nova.image import glance as nova_glance
from nova import service_auth

from image_handlers.glance import image_info
from image_handlers.image import ImageInfo

IMAGE_API = nova_glance.API()

# Nova's image API has no call for the service-only locations API.
_NO_LOCATIONS_API = ("locations API: not asked (Nova's image API gives the "
                     "record's locations and direct_url)")


class NovaImageSource:
    """The chain's ImageSource for one request context."""

    def __init__(self, context) -> None:
        self.context = context

    @property
    def endpoint(self) -> str:
        """Glance's API root as Nova finds it ([glance] options or the catalog)."""
        return next(nova_glance.get_api_servers(self.context)).rstrip('/')

    def get_image(self, image_id: str) -> ImageInfo:
        """Nova's ImageNotFound passes through: Nova's callers act on it
        (``_try_fetch_image_cache`` then copies the image from another host)."""
        record = IMAGE_API.get(self.context, image_id, include_locations=True)
        return image_info(image_id, record, api_note=_NO_LOCATIONS_API)

    def auth_headers(self) -> dict[str, str]:
        """The user's token, and the service token as [service_user] says: the
        same public calls Nova's Glance client is built from."""
        session = service_auth.get_service_auth_session('glance')
        auth = service_auth.get_service_user_token_auth_plugin(self.context)
        return dict(session.get_auth_headers(auth=auth) or {})

    def copy_to_store(self, image_id: str, store: str) -> str:
        """copy-image through Nova's own call (``copy_image_to_store``, the one
        images_rbd_glance_store_name uses), with the request's credentials."""
        from nova import exception as nova_exc
        from image_handlers import glance_import
        try:
            IMAGE_API.copy_image_to_store(self.context, image_id, store)
        except nova_exc.ImageImportImpossible as exc:     # Glance's 409
            return glance_import.classify(409, str(exc))
        except nova_exc.ImageBadRequest as exc:           # Glance's 400
            return glance_import.classify(400, str(exc))
        except nova_exc.ImageNotAuthorized as exc:        # 403: copy_image policy
            raise glance_import.CopyRefused(
                f'{exc} (Glance\'s copy_image policy: admin only by default)')
        return glance_import.STARTED

    def glance_info(self) -> dict:
        """Glance's stores and import methods: Nova's image API has no call for
        them, so glanceclient over Nova's public service-auth session."""
        import glanceclient
        client = glanceclient.Client(
            '2', session=service_auth.get_service_auth_session('glance'),
            auth=service_auth.get_service_user_token_auth_plugin(self.context),
            endpoint_override=self.endpoint)
        return {'stores': client.images.get_stores_info(),
                'import': client.images.get_import_info()}

    def key_manager_context(self):
        """The request context: castellan reads the user's certificates with it,
        as Nova's own signature check does."""
        return self.context
