# shellcheck shell=bash
# The gateway demo's walkthrough, sourced by scripts/demo.sh (`--check`: the stack run natively)
# and scripts/compose-check.sh (the same stack from docker-compose.yml), so that both pass the
# same checks. Not run by itself.
#
# The caller sets ROOT, PROG, WORK (a scratch directory), PYTHON, GRPCURL (empty: the gRPC checks
# are skipped) and GATEWAY_PORT, GRPC_PORT, HTTP_PORT (the loopback ports of the gateway and of
# nmp-authz), and defines:
#   check_listeners   pass or flunk: the stack is reachable on loopback only
#   upstream_log      print what the demo upstream has logged (one line per request it served)
#   check_alive       non-zero when a part of the stack has stopped
#   show_logs         the stack's recent logs, on stderr

# ---- quickstart tokens (unsigned: alg "none", accepted only in quickstart mode) ----

b64url() { printf '%s' "$1" | base64 | tr -d '\n=' | tr '+/' '-_'; }
unsigned_token() { # sub [email]
    local now claims
    now="$(date +%s)"
    claims="\"sub\":\"$1\",${2:+\"email\":\"$2\",}\"iat\":$now,\"exp\":$((now + 86400))"
    printf '%s.%s.' "$(b64url '{"alg":"none","typ":"JWT"}')" "$(b64url "{$claims}")"
}
ALICE="$(unsigned_token alice@example.com alice@example.com)"
SERVICE="$(unsigned_token service:demo)" # a service principal: the PDP API answers only those
GATEWAY="http://127.0.0.1:$GATEWAY_PORT"
MODELS="/apis/models/v2/workspaces/default/models"

# ---- checks ----

failures=0
pass() { echo "ok    $1"; }
flunk() {
    echo "FAIL  $1" >&2
    failures=$((failures + 1))
}
expect() { # description, expected status, path, curl args...
    local what="$1" want="$2" path="$3" got
    shift 3
    got="$(curl -s -o "$WORK/body" -w '%{http_code}' --max-time 5 "$@" "$GATEWAY$path" || true)"
    if [ "$got" = "$want" ]; then
        pass "$what: $got"
    else
        flunk "$what: expected $want, got ${got:-no answer}: $(head -c 300 "$WORK/body" 2>/dev/null)"
    fi
}

# Bounded: a container's log reaches `docker logs` a moment after the line is written.
upstream_logged() { # text
    local deadline=$((SECONDS + 10))
    until upstream_log | grep -qF -- "$1"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

walkthrough() {
    check_listeners

    # The refused requests carry a mark in their query (which no rule looks at), so that the
    # upstream's log shows whether any of them got through.
    local mark="walkthrough-$$-$RANDOM"
    expect "no token: GET $MODELS" 401 "$MODELS?refused=$mark"
    expect "unsigned token, no access: GET /apis/models/v2/workspaces/team-a/models" 403 \
        "/apis/models/v2/workspaces/team-a/models?refused=$mark" -H "Authorization: Bearer $ALICE"
    expect "GET /internal/x" 404 "/internal/x?refused=$mark" -H "Authorization: Bearer $ALICE"

    expect "unsigned token (alice): GET $MODELS" 200 "$MODELS?allowed=$mark" \
        -H "Authorization: Bearer $ALICE" -H "X-NMP-Principal-Id: mallory" -H "x-nmp-authorized: forged"
    if "$PYTHON" - "$WORK/body" <<'EOF'; then
import json, sys
headers = json.load(open(sys.argv[1]))["headers"]
assert headers.get("x-nmp-authorized") == "true", headers
assert headers.get("x-nmp-principal-id") == "alice@example.com", headers
EOF
        pass "the upstream saw x-nmp-authorized: true and x-nmp-principal-id: alice@example.com (not the client's)"
    else
        flunk "the upstream's view of the allowed request: $(cat "$WORK/body")"
    fi
    # The upstream logs a request as it answers it: the refused ones were sent earlier, so once
    # the allowed one is in the log, any refused one that got through is there too.
    if ! upstream_logged "allowed=$mark"; then
        flunk "the allowed request is not in the upstream's log: $(upstream_log | tail -n 3)"
    elif upstream_log | grep -qF "refused=$mark"; then
        flunk "the upstream saw a refused request: $(upstream_log | grep -F "refused=$mark")"
    else
        pass "the upstream saw none of the refused requests"
    fi

    # What NMP serves without authorization goes to the API with no decision: no x-nmp-*.
    expect "no token: GET /studio/ (the Studio UI)" 200 /studio/ -H "X-NMP-Authorized: true"
    if "$PYTHON" - "$WORK/body" <<'EOF'; then
import json, sys
answer = json.load(open(sys.argv[1]))
assert answer["path"] == "/studio/", answer
assert not [h for h in answer["headers"] if h.startswith("x-nmp-")], answer["headers"]
EOF
        pass "the upstream got /studio/ with no x-nmp-* header (the client's x-nmp-authorized dropped)"
    else
        flunk "the upstream's view of /studio/: $(cat "$WORK/body")"
    fi
    expect "no token: GET /studio-admin" 401 /studio-admin

    if curl -s --max-time 5 "http://127.0.0.1:$HTTP_PORT/apis/auth/discovery" | grep -q '"auth_enabled": *true'; then
        pass "nmp-authz's discovery (its HTTP port) says auth is enabled"
    else
        flunk "nmp-authz's discovery does not say auth_enabled: true"
    fi

    if [ -n "$GRPCURL" ]; then
        local out
        # Through server reflection (v1 and v1alpha are served; grpcurl before 1.9 asks for
        # v1alpha), as README's walkthrough does.
        if out="$("$GRPCURL" -plaintext -max-time 5 "127.0.0.1:$GRPC_PORT" list 2>&1)" &&
            grep -q '^nmp_authz.v1.PolicyDecision$' <<<"$out"; then
            pass "grpcurl list (reflection) names nmp_authz.v1.PolicyDecision"
        else
            flunk "grpcurl list (reflection): $out"
        fi
        if out="$("$GRPCURL" -plaintext -max-time 5 -H "authorization: Bearer $SERVICE" \
            -d '{"principal": {"principal_id": "alice@example.com"}, "method": "GET", "path": "'"$MODELS"'"}' \
            "127.0.0.1:$GRPC_PORT" nmp_authz.v1.PolicyDecision/Allow 2>&1)" &&
            grep -q '"allowed": true' <<<"$out"; then
            pass "grpcurl PolicyDecision/Allow (service:demo asks about alice): allowed"
        else
            flunk "grpcurl PolicyDecision/Allow: $out"
        fi
    else
        echo "skip  grpcurl not found (PATH or .venv/bin): PDP example not checked"
    fi
}

# The verdict, after walkthrough and any checks of the caller's own: 0 when all passed.
walkthrough_verdict() {
    check_alive || failures=$((failures + 1))
    if ((failures)); then
        echo "$PROG: $failures check(s) failed" >&2
        show_logs
        return 1
    fi
    echo "$PROG: all checks passed"
}
