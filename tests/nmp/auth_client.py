"""NMP's own PDP client (nmp.common.auth.AuthClient, unmodified) calling a PDP.

JSON on stdin:
  {"auth": {...NMP `auth:` config: enabled, policy_decision_point_base_url,
            policy_decision_point_provider, propagation_poll_interval_seconds...},
   "service_name": "probe",
   "calls": [{"call": "authorize_request", "principal": {"id": ..., "email": ..., "groups": [...]},
              "method": "GET", "path": "/...", "scopes": [...]},
             {"call": "has_permissions", "principal": {...}, "workspace": "ws1", "permissions": [...]},
             {"call": "wait_role", "principal_id": "...", "workspace": "ws1", "role": "Editor",
              "is_present": true, "timeout": 10}]}
JSON on stdout: {"results": [{"ok": <value>, "seconds": <float>} | {"error": "<type>: <message>"}]}
"""

import asyncio
import json
import sys
import time


async def run(request):
    from nmp.common.auth import AuthClient, Principal
    from nmp.common.config import AuthConfig

    config = AuthConfig(**request["auth"])
    results = []
    for call in request["calls"]:
        principal = Principal(**call.get("principal", {}))
        client = AuthClient(principal=principal, config=config, service_name=request["service_name"])
        started = time.monotonic()
        try:
            if call["call"] == "authorize_request":
                result = await client.authorize_request(call["method"], call["path"], scopes=call.get("scopes"))
                value = result.allowed
            elif call["call"] == "has_permissions":
                value = await client.has_permissions(call["workspace"], call["permissions"])
            elif call["call"] == "wait_role":
                value = await client.wait_role(
                    call["principal_id"],
                    call["workspace"],
                    call["role"],
                    is_present=call.get("is_present", True),
                    timeout=call.get("timeout", 10.0),
                )
            else:
                raise ValueError(f"unknown call {call['call']!r}")
            results.append({"ok": value, "seconds": time.monotonic() - started})
        except Exception as error:  # the test asserts on the kind of failure
            status = getattr(getattr(error, "response", None), "status_code", None)
            results.append({"error": f"{type(error).__name__}: {error}", "status": status})
    return {"results": results}


def main():
    request = json.load(sys.stdin)
    answer_to, sys.stdout = sys.stdout, sys.stderr
    json.dump(asyncio.run(run(request)), answer_to)


if __name__ == "__main__":
    main()
