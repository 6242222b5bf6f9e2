"""Prints, as JSON, the paths NMP's own service middleware (nmp.common.auth.middleware, as
installed) serves without asking its PDP: HEALTH_ENDPOINTS (any method), PUBLIC_GET_PATHS
(GET and HEAD) and BYPASS_PREFIXES (tested with str.startswith). Reads nothing from stdin."""

import json

from nmp.common.auth import middleware

print(
    json.dumps(
        {
            "health_endpoints": sorted(middleware.HEALTH_ENDPOINTS),
            "public_get_paths": sorted(middleware.PUBLIC_GET_PATHS),
            "bypass_prefixes": list(middleware.BYPASS_PREFIXES),
        }
    )
)
