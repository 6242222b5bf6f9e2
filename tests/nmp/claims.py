"""NMP 0.3.0's own identity code, unmodified, on inputs from tests/nmp_identity.rs.

stdin: one JSON object with any of
  "mappings": [{"oidc": {...auth.oidc settings...}, "claims": {...}, "token": "..."}]
      For each, NMP's view of both identity paths: "metadata" runs
      JWTValidator._extract_token_claims(claims) (claims another hop verified), "bearer" runs
      JWTValidator.validate_token(token) (an unsigned token, auth.allow_unsigned_jwt on). Then
      what NMP's middleware does next: Principal(id, email, groups), and
      validate_runtime_authorize_scopes on the scopes. With an "ok" outcome, NMP's own
      judgement of what its x-nmp-* headers carry exactly ("carried").
  "headers": [[[name, value], ...], ...]
      Each header set, as UTF-8 bytes on the wire, through NMP's AuthorizationMiddleware (auth
      on; the PDP it calls answers allowed and records the input it was sent).
  "facts": true
      Facts the tests rest on: the code points Python's str.isspace() accepts (str.split() and
      str.strip() use them), and whether NMP's membership and role-binding inputs accept
      principals that no x-nmp-* header can carry.
stdout: {"mappings": [...], "headers": [...], "facts": {...}}, in input order.
"""

import asyncio
import json
import logging
import os
import sys

# The middleware reads auth.enabled from NMP's configuration, here its environment.
os.environ["NMP_AUTH_ENABLED"] = "true"
logging.disable(logging.CRITICAL)

import httpx  # noqa: E402
from nmp.common.auth.authz_format import validate_runtime_authorize_scopes  # noqa: E402
from nmp.common.auth.exceptions import InvalidPrincipalHeader  # noqa: E402
from nmp.common.auth.jwt import JWTValidator  # noqa: E402
from nmp.common.auth.middleware import AuthorizationMiddleware  # noqa: E402
from nmp.common.auth.models import Principal  # noqa: E402
from nmp.common.config import AuthConfig  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

PROBE_PATH = "/apis/probe"


def latin1(value: str) -> str:
    """A header value as Starlette hands it to NMP: its UTF-8 bytes decoded as Latin-1."""
    return value.encode("utf-8").decode("latin-1")


def parsed(headers: dict):
    """Principal.from_headers on headers as Starlette decodes them; None when it refuses."""
    try:
        return Principal.from_headers({k: latin1(v) for k, v in headers.items()})
    except InvalidPrincipalHeader:
        return None


def carried(subject, email, groups, scopes, middleware):
    """NMP's judgement of what nmp-authz's headers would carry exactly."""
    principal = parsed({"x-nmp-principal-id": subject})
    email_ok = not email or (
        (p := parsed({"x-nmp-principal-id": "x", "x-nmp-principal-email": email})) is not None
        and p.email == email
    )
    kept = []
    for group in groups:
        p = parsed({"x-nmp-principal-id": "x", "x-nmp-principal-groups": group})
        if p is not None and p.groups == [group]:
            kept.append(group)
    fit = parsed({"x-nmp-principal-id": "x", "x-nmp-principal-groups": ",".join(kept)})
    nonempty = [s for s in scopes if s]
    scopes_state = "same"
    if not all(isinstance(s, str) for s in nonempty):
        scopes_state = "not_strings"
    elif nonempty:
        status, _, pdp_input = middleware(
            [("x-nmp-principal-id", "x"), ("x-nmp-scopes", " ".join(nonempty))]
        )
        if status != 200:
            scopes_state = "refused"
        elif pdp_input.get("scopes") != nonempty:
            scopes_state = "altered"
    return {
        "id": principal is not None and principal.id == subject,
        "email": email_ok,
        "groups": kept,
        "groups_fit": fit is not None,
        "scopes": scopes_state,
    }


def after_mapping(claims, middleware):
    """What NMP's middleware does with TokenClaims (or None) before it calls the PDP."""
    if claims is None:
        return {"outcome": "no_identity"}
    try:
        Principal(id=claims.subject, email=claims.email, groups=claims.groups)
    except Exception as e:  # pydantic: the middleware answers 500
        return {"outcome": "principal_error", "error": str(e)}
    try:
        validate_runtime_authorize_scopes(claims.scopes or None)
    except Exception as e:  # the middleware answers 400
        return {"outcome": "scope_error", "error": str(e)}
    return {
        "outcome": "ok",
        "subject": claims.subject,
        "email": claims.email,
        "groups": claims.groups,
        "scopes": claims.scopes,
        "carried": carried(
            claims.subject, claims.email, claims.groups, claims.scopes, middleware
        ),
    }


class Middleware:
    """NMP's AuthorizationMiddleware in front of one route, with a recording PDP."""

    def __init__(self, loop):
        self.loop = loop
        self.seen = None
        pdp = httpx.AsyncClient(transport=httpx.MockTransport(self._pdp))
        app = Starlette(routes=[Route(PROBE_PATH, self._endpoint)])
        self.app = AuthorizationMiddleware(app, service_name="probe", http_client=pdp)

    def _pdp(self, request):
        self.seen = json.loads(request.content)["input"]
        return httpx.Response(200, json={"result": {"allowed": True}})

    async def _endpoint(self, request):
        return JSONResponse({"ok": True})

    def __call__(self, headers):
        """(status, detail, PDP input) for a GET with `headers` ([name, value] pairs)."""
        self.seen = None
        response = {"body": b""}
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": PROBE_PATH,
            "raw_path": PROBE_PATH.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(k.encode("latin-1"), v.encode("utf-8")) for k, v in headers],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
        }

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            if message["type"] == "http.response.start":
                response["status"] = message["status"]
            elif message["type"] == "http.response.body":
                response["body"] += message.get("body", b"")

        self.loop.run_until_complete(self.app(scope, receive, send))
        detail = None
        if response["status"] != 200:
            detail = json.loads(response["body"]).get("detail")
        return response["status"], detail, self.seen


def mappings(cases, middleware, loop):
    validators = {}
    out = []
    for case in cases:
        key = json.dumps(case["oidc"], sort_keys=True)
        if key not in validators:
            config = AuthConfig(enabled=True, allow_unsigned_jwt=True, oidc=case["oidc"])
            validators[key] = JWTValidator(config)
        validator = validators[key]
        try:
            mapped = validator._extract_token_claims(case["claims"])
        except Exception as e:
            metadata = {"outcome": "exception", "error": repr(e)}
        else:
            metadata = after_mapping(mapped, middleware)
        bearer = loop.run_until_complete(validator.validate_token(case["token"]))
        out.append({"metadata": metadata, "bearer": after_mapping(bearer, middleware)})
    return out


def facts():
    from nmp.core.auth.api.v2.iam.schemas import RoleBindingInput
    from nmp.core.entities.api.v2.workspaces.schemas import WorkspaceMemberInput

    names = ["Data Science", "cn=ml-team,ou=groups", "ml-team,admins", "émigrés"]
    accepted = {}
    for name in names:
        try:
            WorkspaceMemberInput(principal=name, roles=["Viewer"])
            RoleBindingInput(principal=name, workspace="default", role="Viewer")
            accepted[name] = True
        except Exception:
            accepted[name] = False
    return {
        "isspace": [c for c in range(sys.maxunicode + 1) if chr(c).isspace()],
        "binding_inputs_accept": accepted,
        "header_carries": {name: carried("x", None, [name], [], None)["groups"] == [name] for name in names},
    }


def main():
    request = json.load(sys.stdin)
    loop = asyncio.new_event_loop()
    middleware = Middleware(loop)
    result = {}
    if "mappings" in request:
        result["mappings"] = mappings(request["mappings"], middleware, loop)
    if "headers" in request:
        result["headers"] = [
            dict(zip(("status", "detail", "input"), middleware(headers)))
            for headers in request["headers"]
        ]
    if request.get("facts"):
        result["facts"] = facts()
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
