"""Serving a policy to a robot over websockets, in openpi's wire protocol (msgpack with numpy arrays).

    server = PolicyServer(load_policy(dir), port=8000).run()      # or `driftkit serve --checkpoint DIR`
    client = PolicyClient("127.0.0.1", 8000); client.infer(obs)["actions"]   # [T, D]
    queue = ActionQueue(client, rtc=True); action = queue.step(obs)           # a control loop's tick

See driftkit.serving.protocol (keys, aliases, checks), .server (errors, micro-batching, seeds) and .client.
"""

from driftkit.serving.client import ActionQueue, BadRequestError, PolicyClient, ServerError
from driftkit.serving.protocol import RequestError, ServeSpec, parse_request
from driftkit.serving.wire import packb, unpackb
from driftkit.serving.server import PolicyServer, ServerStats, policy_metadata

__all__ = [
    "ActionQueue",
    "BadRequestError",
    "PolicyClient",
    "PolicyServer",
    "RequestError",
    "ServeSpec",
    "ServerError",
    "ServerStats",
    "packb",
    "parse_request",
    "policy_metadata",
    "unpackb",
]
