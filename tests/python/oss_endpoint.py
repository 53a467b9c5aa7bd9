"""Ask task-router for an endpoint from a task on an open-source ClearML server.

`Task.request_external_endpoint`, `wait_for_external_endpoint` and `list_external_endpoints`
raise ValueError "ClearML-server does not support requested feature set '['advanced']'
(Enterprise license required)" on an open-source server, before writing anything (clearml
2.1.7 `clearml/task.py:1014,1126,1245`; `backend_api/session/session.py:874-888`). The router only
needs the keys those calls write, so a task writes them itself (the way clearml-session does):

    from oss_endpoint import request_endpoint, read_endpoint
    request_endpoint(task, 8080)                     # HTTP on port 8080
    request_endpoint(task, 9000, protocol="tcp")     # TCP on port 9000
    request_endpoint(task, 7000, name="ui")          # a second, named endpoint
    url = read_endpoint(task)                        # None until the router wrote it back

`task.set_system_tags` is public; no public SDK call writes runtime properties (2.1.12 has only
`set_progress`), so this uses `Task._set_runtime_properties`, the call the SDK's own
`request_external_endpoint` makes (`clearml/task.py:1087`) and that clearml-session uses. Both
exist in every SDK from 1.x (API 2.13) on. Works with any SDK release and server edition.
"""

import os

from clearml.utilities.networking import get_private_ip

# What `request_external_endpoint` writes, per protocol (clearml 2.1.7 clearml/task.py:218-221).
_KEYS = {
    "http": ("EXTERNAL", "_ADDRESS", "_PORT"),
    "tcp": ("EXTERNAL_TCP", "external_address", "external_tcp_port"),
}


def _suffix(name):
    return "__%s" % name if name else ""


def request_endpoint(task, port, protocol="http", name=None):
    """Writes the request for `port` (`protocol` "http" or "tcp", optional endpoint `name`)."""
    service, address_key, port_key = _KEYS[protocol]
    sfx = _suffix(name)
    address = os.environ.get("CLEARML_AGENT_HOST_IP") or get_private_ip()
    task._set_runtime_properties(
        {"_SERVICE" + sfx: service, address_key + sfx: address, port_key + sfx: int(port)}
    )
    # The tag the router looks for (request_external_endpoint adds it the same way).
    task.set_system_tags(list(set((task.get_system_tags() or []) + ["external_service"])))


def read_endpoint(task, protocol="http", name=None):
    """The endpoint the router wrote back (a URL for HTTP, `address:port` for TCP), or None."""
    task.reload()
    runtime = task.data.runtime or {}
    sfx = _suffix(name)
    if protocol == "http":
        return runtime.get("endpoint" + sfx) or runtime.get("browser_endpoint" + sfx)
    # The router writes upstream_task_port once it routes (what the SDK waits for).
    if runtime.get("upstream_task_port" + sfx):
        return "%s:%s" % (runtime.get("external_address" + sfx), runtime.get("external_tcp_port" + sfx))
    return None
