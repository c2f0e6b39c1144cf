"""Lab stand-in for keystonemiddleware's auth_token filter in Glance's paste pipeline.

It replaces Keystone ONLY: it turns a fixed lab token into the identity headers that
keystonemiddleware would set after validating a real token. Glance's own ``context``
middleware and its default policies (oslo.policy) still run for real on those headers.
Clients keep using keystoneauth (``admin_token`` plugin: endpoint + token), as Nova does.

Tokens (X-Auth-Token, and X-Service-Token for the service roles):

* ``lab-admin``            project "admin-project", roles admin,member,reader,
                           service role "service"
* ``lab-member-<project>`` project <project>, roles member,reader
* ``lab-reader-<project>`` project <project>, role reader
* ``lab-service``          project "service", roles service (+ service role "service")

Client-sent identity headers are always stripped first; unknown tokens get 401; a
request without a token goes on as "Invalid" (like ``delay_auth_decision``) so Glance
answers it (healthcheck/versions, or 401 from the context middleware).
Stdlib only: loaded by Glance's uWSGI from tools/lab on its PYTHONPATH.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

WSGIApp = Callable[[dict, Callable], Iterable[bytes]]

# Header families keystonemiddleware owns (environ names without the HTTP_X_ prefix).
_OWNED_PREFIXES = (
    "IDENTITY_STATUS", "SERVICE_", "DOMAIN_", "PROJECT_", "USER", "TENANT", "ROLE",
    "SYSTEM_SCOPE", "IS_ADMIN_PROJECT", "TRUST", "APP_CRED", "ACCESS_RULES",
)
_KEEP = {"HTTP_X_SERVICE_TOKEN"}


def identity(token: str) -> dict[str, Any] | None:
    """Identity for a lab token, or None when the token is unknown."""
    if token == "lab-admin":
        return {"user": "admin", "project": "admin-project",
                "roles": ["admin", "member", "reader"], "service_roles": ["service"],
                "is_admin_project": True}
    if token == "lab-service":
        return {"user": "service", "project": "service", "roles": ["service"],
                "service_roles": ["service"], "is_admin_project": False}
    for kind, roles in (("member", ["member", "reader"]), ("reader", ["reader"])):
        prefix = f"lab-{kind}-"
        if token.startswith(prefix) and len(token) > len(prefix):
            project = token[len(prefix):]
            return {"user": f"{kind}-{project}", "project": project, "roles": roles,
                    "service_roles": [], "is_admin_project": False}
    return None


def _strip(environ: dict) -> None:
    for key in [k for k in environ if k.startswith("HTTP_X_")]:
        if key not in _KEEP and key[len("HTTP_X_"):].startswith(_OWNED_PREFIXES):
            del environ[key]


def _set_identity(environ: dict, ident: dict[str, Any]) -> None:
    roles = ",".join(ident["roles"])
    headers = {
        "IDENTITY_STATUS": "Confirmed",
        "USER_ID": ident["user"], "USER_NAME": ident["user"], "USER": ident["user"],
        "USER_DOMAIN_ID": "default", "USER_DOMAIN_NAME": "Default",
        "PROJECT_ID": ident["project"], "PROJECT_NAME": ident["project"],
        "PROJECT_DOMAIN_ID": "default", "PROJECT_DOMAIN_NAME": "Default",
        "TENANT_ID": ident["project"], "TENANT_NAME": ident["project"],
        "TENANT": ident["project"],
        "ROLES": roles, "ROLE": roles,
        "IS_ADMIN_PROJECT": str(ident["is_admin_project"]),
    }
    for name, value in headers.items():
        environ["HTTP_X_" + name] = value


def _unauthorized(start_response: Callable, why: str) -> list[bytes]:
    body = ('{"error": {"code": 401, "title": "Unauthorized", "message": "%s"}}'
            % why).encode()
    start_response("401 Unauthorized", [
        ("Content-Type", "application/json"), ("Content-Length", str(len(body))),
        ("WWW-Authenticate", 'Keystone uri="lab"')])
    return [body]


class LabAuth:
    """WSGI filter: X-Auth-Token -> keystonemiddleware-style identity headers."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        _strip(environ)
        token = environ.get("HTTP_X_AUTH_TOKEN", "")
        if token:
            ident = identity(token)
            if ident is None:
                return _unauthorized(start_response, "unknown lab token")
            _set_identity(environ, ident)
        else:
            environ["HTTP_X_IDENTITY_STATUS"] = "Invalid"
        service_token = environ.get("HTTP_X_SERVICE_TOKEN", "")
        service_roles = list(ident["service_roles"]) if token else []
        if service_token:
            sident = identity(service_token)
            if sident is None:
                return _unauthorized(start_response, "unknown lab service token")
            environ["HTTP_X_SERVICE_IDENTITY_STATUS"] = "Confirmed"
            environ["HTTP_X_SERVICE_USER_ID"] = sident["user"]
            environ["HTTP_X_SERVICE_PROJECT_ID"] = sident["project"]
            service_roles = sorted(set(service_roles) | set(sident["roles"]))
        if service_roles:
            environ["HTTP_X_SERVICE_ROLES"] = ",".join(service_roles)
        return self.app(environ, start_response)


def filter_factory(global_conf: dict, **local_conf: str) -> Callable[[WSGIApp], LabAuth]:
    """paste.deploy entry point: ``paste.filter_factory = glance_labauth:filter_factory``."""
    return LabAuth
