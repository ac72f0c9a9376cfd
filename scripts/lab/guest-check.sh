#!/usr/bin/env bash
# The lab's end-to-end checks, run inside the VM as root by scripts/lab/lab.sh over
# `vagrant ssh` (make lab-test).
#
#   guest-check.sh before         the agent is an active systemd service; /usr/local/bin/nstask;
#                                 the web example runs, `nstask run --rm examples/hello.json`
#                                 fetches from it (output and exit code); the agent restarts
#                                 under systemd with the web task running, which stays running
#                                 and managed (it answers, `nstask stop` stops it); a second web
#                                 task is left running for the reboot
#   guest-check.sh after-reboot   the agent is back; both web tasks are recorded as STOPPED;
#                                 a new task runs
#
# Everything under TCG is slow: the waits are long.
set -euo pipefail

cd /nstask
STATE=/var/tmp/nstask-lab-test
FAILS=0
ok() { printf 'guest-check: ok: %s\n' "$*"; }
bad() { printf 'guest-check: FAIL: %s\n' "$*"; FAILS=$((FAILS + 1)); }
finish() {
    if ((FAILS)); then
        printf 'guest-check: %s: %d check(s) failed\n' "$1" "$FAILS"
        journalctl -u nstask-agent --no-pager -n 40 || true
        exit 1
    fi
    printf 'guest-check: %s: all passed\n' "$1"
}

# field TASK KEY: a top-level field of `nstask inspect TASK`, empty when missing or null.
field() {
    nstask inspect "$1" 2>/dev/null | python3 -c '
import json, sys
v = json.load(sys.stdin).get(sys.argv[1])
print("" if v is None else v)' "$2" || true
}

# fetch URL: the body on stdout (python3: the VM's busybox-static wget crashes outside a task).
fetch() {
    python3 -c 'import sys, urllib.request
sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' "$1" 2>/dev/null
}

wait_active() { # seconds
    local deadline=$((SECONDS + $1))
    until [[ "$(systemctl is-active nstask-agent)" == active ]] && nstask ps >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 1
    done
}

wait_status() { # task status seconds
    local deadline=$((SECONDS + $3))
    until [[ "$(field "$1" lastStatus)" == "$2" ]]; do
        ((SECONDS < deadline)) || return 1
        sleep 1
    done
}

start_web() { # prints the task id once it runs and answers on :8080, else fails
    local id ip deadline
    id="$(nstask run -d examples/web.json)" || return 1
    wait_status "$id" RUNNING 300 || { echo "task $id not RUNNING: $(field "$id" lastStatus)" >&2; return 1; }
    ip="$(field "$id" ip)"
    deadline=$((SECONDS + 60))
    until fetch "http://$ip:8080/" >/dev/null; do
        ((SECONDS < deadline)) || { echo "task $id ($ip): :8080 does not answer" >&2; return 1; }
        sleep 1
    done
    echo "$id"
}

before() {
    local out rc pid1 pid2 web web2 ip
    rm -rf "$STATE"
    mkdir -p "$STATE"
    if wait_active 120; then ok "systemctl is-active nstask-agent: active"; else bad "nstask-agent is $(systemctl is-active nstask-agent)"; finish before; fi
    if [[ "$(command -v nstask)" == /usr/local/bin/nstask ]]; then
        ok "nstask on the PATH: /usr/local/bin/nstask"
    else
        bad "nstask on the PATH is '$(command -v nstask)'"
    fi

    # Network safety: the lab network (libvirt's nstask-lab, no forwarding) gives the VM a route
    # to the host's subnet only; checked without sending anything anywhere.
    local routes
    routes="$(ip -4 route show | grep -v ' dev nstask' || true)"
    if ! grep -q '^default' <<<"$routes" && [[ "$(wc -l <<<"$routes")" == 1 ]] \
        && grep -q '^192\.168\.231\.0/24 ' <<<"$routes"; then
        ok "VM routes: only the lab network 192.168.231.0/24 (no default route)"
    else
        bad "VM routes beyond the lab network: $(tr '\n' ';' <<<"$routes")"
    fi

    if web="$(start_web)"; then
        ip="$(field "$web" ip)"
        ok "web example running: task $web at $ip:8080"
    else
        bad "the web example did not start"
        finish before
    fi
    echo "$web" >"$STATE/web1"

    set +e
    out="$(nstask run --rm -e "WEB_URL=http://$ip:8080/" examples/hello.json 2>&1)"
    rc=$?
    set -e
    printf '%s\n' "$out" | sed 's/^/    | /'
    if ((rc == 0)); then ok "nstask run --rm examples/hello.json: exit code 0"; else bad "hello: exit code $rc"; fi
    if grep -q '^hello from task ' <<<"$out"; then ok "hello: its greeting"; else bad "hello: no greeting"; fi
    if grep -q 'TaskARN' <<<"$out"; then ok "hello: its task metadata"; else bad "hello: no TaskARN from the metadata endpoint"; fi
    if grep -qF "hello from the web task" <<<"$out"; then
        ok "hello: fetched the web task's page"
    else
        bad "hello: did not fetch the web task's page"
    fi

    pid1="$(systemctl show -p MainPID --value nstask-agent)"
    systemctl restart nstask-agent
    if wait_active 120; then :; else bad "nstask-agent not active after restart"; finish before; fi
    pid2="$(systemctl show -p MainPID --value nstask-agent)"
    if [[ "$pid1" != "$pid2" && "$pid2" != 0 ]]; then
        ok "systemctl restart nstask-agent: new agent (pid $pid1 -> $pid2)"
    else
        bad "the agent's pid did not change ($pid1 -> $pid2)"
    fi
    if [[ "$(field "$web" lastStatus)" == RUNNING ]] && nstask ps -q | grep -qxF "$web"; then
        ok "web task $web still RUNNING in nstask ps after the agent restart"
    else
        bad "web task after restart: $(field "$web" lastStatus)"
    fi
    if fetch "http://$ip:8080/" | grep -qF "hello from the web task"; then
        ok "web task still answers after the agent restart"
    else
        bad "web task does not answer after the agent restart"
    fi
    nstask stop "$web" >/dev/null
    if wait_status "$web" STOPPED 120; then
        ok "nstask stop $web by the new agent: STOPPED (exit code $(field "$web" exitCode))"
    else
        bad "web task not STOPPED after nstask stop: $(field "$web" lastStatus)"
    fi

    if web2="$(start_web)"; then
        ok "second web task $web2 running (left running for the reboot)"
        echo "$web2" >"$STATE/web2"
    else
        bad "the second web task did not start"
    fi
    finish before
}

after_reboot() {
    local web web2 out rc
    web="$(cat "$STATE/web1")"
    web2="$(cat "$STATE/web2")"
    if wait_active 300; then ok "after the reboot: nstask-agent active"; else bad "after the reboot: nstask-agent is $(systemctl is-active nstask-agent)"; finish after-reboot; fi
    nstask ps -a | sed 's/^/    | /'
    if [[ "$(field "$web" lastStatus)" == STOPPED ]] && nstask ps -a -q | grep -qxF "$web"; then
        ok "stopped task $web recorded: STOPPED"
    else
        bad "task $web after the reboot: '$(field "$web" lastStatus)'"
    fi
    if wait_status "$web2" STOPPED 120 && nstask ps -a -q | grep -qxF "$web2"; then
        ok "task $web2 (running at the reboot) recorded: STOPPED"
    else
        bad "task $web2 after the reboot: '$(field "$web2" lastStatus)'"
    fi
    set +e
    out="$(nstask run --rm examples/hello.json 2>&1)"
    rc=$?
    set -e
    if ((rc == 0)) && grep -q '^hello from task ' <<<"$out"; then
        ok "after the reboot: nstask run --rm examples/hello.json: exit code 0, greeting"
    else
        printf '%s\n' "$out" | sed 's/^/    | /'
        bad "after the reboot: hello exit code $rc"
    fi
    finish after-reboot
}

case "${1:-}" in
    before) before ;;
    after-reboot) after_reboot ;;
    *) echo "usage: $0 before|after-reboot" >&2; exit 2 ;;
esac
