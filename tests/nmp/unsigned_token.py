"""An unsigned (alg: none) token from NMP's own helper, as `nmp auth login --unsigned-token`
makes one. JSON in: {"principal_id", "email", "groups", "scopes", "extra_claims"};
JSON out: {"token": "..."}."""

import json
import sys

from nemo_platform.auth.helpers import generate_unsigned_jwt

claims = json.load(sys.stdin)
token = generate_unsigned_jwt(
    claims["principal_id"],
    email=claims.get("email"),
    groups=claims.get("groups"),
    scopes=claims.get("scopes"),
    extra_claims=claims.get("extra_claims"),
)
json.dump({"token": token}, sys.stdout)
