"""A ClearML task driven by a test, one JSON command per stdin line, one JSON answer per stdout
line. It runs the real `clearml` SDK unchanged against whatever CLEARML_API_HOST points to.

Start-up: Task.init (a new task, nothing auto-connected), then `{"ready": true, "task_id": ...}`.
Commands ({"cmd": NAME, ...}):
  request  port, protocol, wait, name     Task.request_external_endpoint(...)
  wait     protocol, name, timeout        Task.wait_for_external_endpoint(...)
  list                                    reload() + Task.list_external_endpoints()
  poll     protocol, name, prefix, timeout
           reload() + list_external_endpoints() until that endpoint starts with prefix (what a
           user of SDK >= 2.1 must do: wait=True may return the task's own address first)
  session  address, port                  the clearml-session way: runtime keys and the
                                          external_service tag written directly, no SDK call
  oss_request  port, protocol, name       tests/python/oss_endpoint.py's request_endpoint (the
                                          open-source way: keys and tag, no feature-set check)
  oss_read     protocol, name             oss_endpoint.read_endpoint: what the router wrote back
  runtime                                 reload() + the runtime properties
  stop                                    mark the task stopped, then exit
  close                                   Task.close(), then exit
Every answer is {"ok": true, "result": ...} or {"ok": false, "error": "..."}.
"""

import json
import sys
import time
import traceback


def answer(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def endpoint_matches(entry, protocol, name, prefix):
    return (
        entry.get("protocol") == protocol
        and entry.get("name") == name
        and str(entry.get("endpoint") or entry.get("browser_endpoint") or "").startswith(prefix)
    )


def main():
    import clearml
    from clearml import Task
    from clearml.backend_api import Session

    import oss_endpoint  # beside this script, so on sys.path

    task = Task.init(
        project_name="task-router tests",
        task_name=sys.argv[1] if len(sys.argv) > 1 else "endpoint task",
        reuse_last_task_id=False,
        auto_connect_frameworks=False,
        auto_connect_arg_parser=False,
        auto_resource_monitoring=False,
        auto_connect_streams=False,
    )
    answer(
        {
            "ready": True,
            "task_id": task.id,
            "sdk": clearml.__version__,
            "feature_set": Session.feature_set,
        }
    )

    def named(cmd):
        # SDK 2.0.x has no endpoint names; only pass the argument when one is asked for.
        return {"endpoint_name": cmd["name"]} if cmd.get("name") is not None else {}

    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            cmd = json.loads(line)
            op = cmd["cmd"]
            if op == "request":
                result = task.request_external_endpoint(
                    int(cmd["port"]),
                    protocol=cmd.get("protocol", "http"),
                    wait=bool(cmd.get("wait", False)),
                    wait_interval_seconds=float(cmd.get("interval", 0.5)),
                    wait_timeout_seconds=float(cmd.get("timeout", 30)),
                    **named(cmd),
                )
            elif op == "wait":
                result = task.wait_for_external_endpoint(
                    wait_interval_seconds=float(cmd.get("interval", 0.5)),
                    wait_timeout_seconds=float(cmd.get("timeout", 30)),
                    protocol=cmd.get("protocol", "http"),
                    **named(cmd),
                )
            elif op == "list":
                task.reload()
                result = task.list_external_endpoints()
            elif op == "poll":
                deadline = time.time() + float(cmd.get("timeout", 30))
                result = None
                while result is None:
                    task.reload()
                    found = [
                        e
                        for e in task.list_external_endpoints()
                        if endpoint_matches(e, cmd["protocol"], cmd.get("name"), cmd["prefix"])
                    ]
                    if found:
                        result = found[0]
                    elif time.time() > deadline:
                        raise TimeoutError(
                            "no %s endpoint %r starting with %r; last seen %r"
                            % (cmd["protocol"], cmd.get("name"), cmd["prefix"], task.list_external_endpoints())
                        )
                    else:
                        time.sleep(float(cmd.get("interval", 0.3)))
            elif op == "session":
                # What clearml-session's interactive task does once sshd is up.
                task._set_runtime_properties(
                    {
                        "_SERVICE": "EXTERNAL_TCP",
                        "external_address": cmd["address"],
                        "external_tcp_port": int(cmd["port"]),
                    }
                )
                task.set_system_tags(list(set((task.get_system_tags() or []) + ["external_service"])))
                result = None
            elif op == "oss_request":
                oss_endpoint.request_endpoint(
                    task, int(cmd["port"]), protocol=cmd.get("protocol", "http"), name=cmd.get("name")
                )
                result = None
            elif op == "oss_read":
                result = oss_endpoint.read_endpoint(task, protocol=cmd.get("protocol", "http"), name=cmd.get("name"))
            elif op == "runtime":
                task.reload()
                result = task._get_runtime_properties()
            elif op == "stop":
                task.mark_stopped(force=True)
                answer({"ok": True, "result": task.get_status()})
                return
            elif op == "close":
                task.close()
                answer({"ok": True, "result": None})
                return
            else:
                raise ValueError("unknown command %r" % op)
            answer({"ok": True, "result": result})
        except Exception as e:  # the test reads the error and fails with it
            answer({"ok": False, "error": "%s: %s" % (type(e).__name__, e), "trace": traceback.format_exc()})


if __name__ == "__main__":
    main()
