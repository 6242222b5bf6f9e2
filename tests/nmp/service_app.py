"""A platform service as NMP builds one: a FastAPI app behind NMP's own AuthorizationMiddleware
(nmp.common.auth, unmodified), whose PDP is whatever NMP_CONFIG_FILE_PATH's `auth:` names.
Every route answers 200 with the principal the middleware established, so a test sees NMP's
own decision (200, or the middleware's 400/401/403/502/503) and who it was about.

Serves on 127.0.0.1, on a port of its own choosing, and prints {"port": N} on its first line
of stdout once it accepts connections.
"""

import asyncio
import json
import socket
import sys


def app():
    from fastapi import FastAPI, Request
    from nmp.common.auth import AuthorizationMiddleware
    from nmp.common.auth.dependencies import auth_client_context

    service = FastAPI()
    service.add_middleware(AuthorizationMiddleware, service_name="probe")

    @service.api_route("/{path:path}", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"])
    async def echo(path: str, request: Request):
        client = auth_client_context.get(None)
        principal = client.principal.model_dump() if client else None
        return {"path": request.url.path, "principal": principal}

    return service


async def main():
    import uvicorn

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    config = uvicorn.Config(app(), log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    print(json.dumps({"port": listener.getsockname()[1]}), flush=True)
    await server.serve(sockets=[listener])


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)
    asyncio.run(main())
