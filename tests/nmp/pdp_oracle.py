"""NMP's own policy decision point, unmodified, as a test oracle for nmp-authz.

Usage (JSON on stdin, JSON on stdout):

  pdp_oracle.py document   {"principals": {...}}
      -> {"document": {"authz": ...}}
      The authorization document NMP 0.3.0's auth service builds (its released static catalog
      merged with the installed plugins' routes, by NMP's build_authorization_data), with the
      given role bindings added as NMP adds them.

  pdp_oracle.py evaluate   {"document": {...}, "cases": [{"entrypoint": "allow", "input": {...}}]}
      -> {"results": [{"result": {...}} | {"error": "..."}]}
      Each case through NMP's embedded PDP engine (policy.wasm, OPA's compiled Rego, run by
      wasmtime) exactly as NMP's /apis/auth/v2/authz/{entrypoint} evaluates it.

Needs NMP_CONFIG_FILE_PATH pointing at a config with `auth.on_invalid_plugin: deny_route` (the
test sets it): plugins whose optional dependencies are not installed are then denied per route,
as NMP's docs tell local installs to do, instead of refusing to build the document.
"""

import asyncio
import json
import sys


def document(request):
    from nmp.core.auth.app.bundle import build_authorization_data

    data = asyncio.run(build_authorization_data(None))
    principals = data["authz"].setdefault("principals", {})
    for principal, binding in request.get("principals", {}).items():
        workspaces = principals.setdefault(principal, {"workspaces": {}})["workspaces"]
        for workspace, roles in binding["workspaces"].items():
            held = workspaces.setdefault(workspace, [])
            held.extend(role for role in roles if role not in held)
    return {"document": data}


def evaluate(request):
    from nmp.core.auth.app.embedded_pdp import engine

    engine.set_policy_data(request["document"])
    results = []
    for case in request["cases"]:
        try:
            results.append({"result": engine.evaluate(case["entrypoint"], case["input"])})
        except engine.PolicyEngineError as error:
            results.append({"error": str(error)})
    return {"results": results}


def main():
    command = sys.argv[1]
    request = json.load(sys.stdin)
    # NMP logs to stdout; keep stdout for the answer alone.
    answer_to, sys.stdout = sys.stdout, sys.stderr
    answer = {"document": document, "evaluate": evaluate}[command](request)
    json.dump(answer, answer_to)


if __name__ == "__main__":
    main()
