#!/bin/sh
# The webserver container's command: nginx in the foreground, plus a watcher that reloads it
# when task-router asks. The router cannot signal nginx across containers without sharing a PID
# namespace (which would tie the two lifecycles together) or the Docker socket (root on the
# host), so it asks through the shared config volume: after installing a configuration it has
# tested with the same nginx build, it writes a new value to the stamp file (NGINX_RELOAD_CMD in
# docker-compose.yml). Polling a small file twice a second costs nothing and needs no tool the
# stock image lacks. A reload nginx rejects keeps the running configuration, as always.
#
# Arguments are passed to every nginx invocation (tests use `-c FILE`).
set -eu

stamp="${TASK_ROUTER_RELOAD_STAMP:-/etc/nginx/conf.d/.reload}"
interval="${TASK_ROUTER_RELOAD_INTERVAL:-0.5}"

# This shell's PID becomes nginx's (exec below); the watcher ends when nginx does.
nginx_pid=$$

watch_stamp() {
    seen=$(cat "$stamp" 2>/dev/null || true)
    while sleep "$interval" && kill -0 "$nginx_pid" 2>/dev/null; do
        now=$(cat "$stamp" 2>/dev/null || true)
        [ "$now" = "$seen" ] && continue
        seen=$now
        if nginx "$@" -s reload; then
            echo "task-router: nginx reload requested ($now)" >&2
        else
            echo "task-router: nginx -s reload failed; the running configuration stays" >&2
        fi
    done
}

watch_stamp "$@" &
exec nginx "$@" -g 'daemon off;'
