#!/bin/sh
# An example hashgate hook for a farm's power handover: adapt the four actions to your hardware.
#
#   [[hook]]
#   events = ["draining", "drained", "resuming", "active"]
#   timeout = "60s"
#   required = true
#   command = ["/usr/local/lib/hashgate/hashgate-hook.sh"]
#
# hashgate runs it without a shell, with the transition in its environment:
#   HASHGATE_EVENT         draining | drained | resuming | active
#   HASHGATE_GROUP         the group (as wired: a container, a row, a PDU)
#   HASHGATE_REASON        why (from the drain, the window or the capacity request)
#   HASHGATE_MODE          pause | disconnect | reconnect
#   HASHGATE_TRIGGER       manual | window NAME | capacity ID | quiet | timeout | ramp
#   HASHGATE_WORKERS       how many miners
#   HASHGATE_WATTS         watts concerned (drawn before a drain, released when drained)
#   HASHGATE_WORKERS_FILE  JSON list of the miners: [{"name": "...", "address": "ip:port"}]
# A non-zero exit (or the timeout) of a required hook stops the transition: the group stays where
# it was and the error shows in /api/v1/groups and hashgate_group_blocked_transitions_total.
#
# Settings, from the environment of hashgate's service (systemd Environment=, or a drop-in):
#   HASHGATE_HOOK_LOG      where to log (default /var/log/hashgate/hooks.log)
#   MINER_SLEEP_URL        e.g. http://{ip}/cgi-bin/sleep  ({ip}: each miner's address)
#   MINER_WAKE_URL         e.g. http://{ip}/cgi-bin/wake
#   SCHEDULER_URL          the AI scheduler's endpoint told when the power is free or taken back
# Without the URLs the script only logs what it would do (a dry run to try windows with).
set -eu

log=${HASHGATE_HOOK_LOG:-/var/log/hashgate/hooks.log}
say() { printf '%s %s %s: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$HASHGATE_EVENT" "$HASHGATE_GROUP" "$*" >> "$log"; }

# Every miner's IP, from the workers file (one "address": "ip:port" per miner).
miner_ips() {
    sed -n 's/.*"address": *"\[\{0,1\}\([^]"]*\)\]\{0,1\}:[0-9]*".*/\1/p' "$HASHGATE_WORKERS_FILE"
}

# Calls a URL template for every miner; fails the hook if any miner does not answer.
each_miner() {
    template=$1 action=$2 failed=0
    for ip in $(miner_ips); do
        if [ -z "$template" ]; then
            say "would $action $ip (set the URL to act)"
            continue
        fi
        url=$(printf '%s' "$template" | sed "s/{ip}/$ip/g")
        if curl -fsS -m 10 -o /dev/null "$url"; then
            say "$action $ip"
        else
            say "FAILED to $action $ip ($url)"
            failed=1
        fi
    done
    return $failed
}

tell_scheduler() {
    if [ -n "${SCHEDULER_URL:-}" ]; then
        curl -fsS -m 10 -H 'Content-Type: application/json' \
            -d "{\"group\":\"$HASHGATE_GROUP\",\"event\":\"$HASHGATE_EVENT\",\"watts\":$HASHGATE_WATTS}" \
            "$SCHEDULER_URL" > /dev/null
    fi
    say "$1"
}

case "$HASHGATE_EVENT" in
    draining) say "$HASHGATE_WORKERS miner(s), $HASHGATE_WATTS W: $HASHGATE_REASON"
              each_miner "${MINER_SLEEP_URL:-}" sleep ;;
    drained)  tell_scheduler "$HASHGATE_WATTS W released for AI work" ;;
    resuming) each_miner "${MINER_WAKE_URL:-}" wake ;;
    active)   tell_scheduler "mining again, $HASHGATE_WATTS W" ;;
    *)        say "unknown event"; exit 2 ;;
esac
