# Shared by the FT curl scripts (sources common.sh): wait for an ft.status role and state.
. "$(dirname "$0")/common.sh"

# ft_wait ROLE STATE: polls ft.status every 0.1 s until it says ROLE/STATE, then prints it as one
# line. Fails with ft.status's reason if the member halts or falls back to standalone instead
# (unless that is what was asked for), or after TIMEOUT seconds (default 60).
ft_wait() {
    local role=$1 state=$2 deadline=$((SECONDS + ${TIMEOUT:-60})) s r st
    while true; do
        s=$(api GET ft.status)
        r=$(jq -r .role <<<"$s")
        st=$(jq -r .state <<<"$s")
        if [ "$r" = "$role" ] && [ "$st" = "$state" ]; then
            jq -c '{role, state, generation, peer, reason}' <<<"$s"
            return 0
        fi
        if [ "$st" = halted ] || { [ "$r" = standalone ] && [ "$role" != standalone ]; }; then
            echo "ft: $r/$st, not $role/$state: $(jq -r .reason <<<"$s")" >&2
            return 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "ft: still $r/$st after ${TIMEOUT:-60} s, not $role/$state: $(jq -r .reason <<<"$s")" >&2
            return 1
        fi
        sleep 0.1
    done
}

# arbiter_json: the "arbiter" object, from ARBITER (a directory both hosts see) or from
# ARBITER_ETCD (etcd client URLs, comma-separated) with ARBITER_KEY (the pair's key prefix, e.g.
# /tandem/pairs/db1) and, as the cluster needs, ARBITER_CA, ARBITER_CERT + ARBITER_CERT_KEY,
# ARBITER_USER + ARBITER_PASSWORD_FILE. Both members must name the same arbiter.
arbiter_json() {
    if [ -n "${ARBITER:-}" ] && [ -n "${ARBITER_ETCD:-}" ]; then
        echo "ft: set ARBITER or ARBITER_ETCD, not both" >&2
        return 1
    fi
    if [ -n "${ARBITER:-}" ]; then
        jq -cn --arg a "$ARBITER" '{path: $a}'
        return
    fi
    : "${ARBITER_ETCD:?set ARBITER (a directory both hosts see) or ARBITER_ETCD (etcd URLs, with ARBITER_KEY)}"
    : "${ARBITER_KEY:?set ARBITER_KEY (the key prefix of the pair in etcd, e.g. /tandem/pairs/db1)}"
    jq -cn --arg e "$ARBITER_ETCD" --arg k "$ARBITER_KEY" --arg ca "${ARBITER_CA:-}" \
        --arg cert "${ARBITER_CERT:-}" --arg key "${ARBITER_CERT_KEY:-}" \
        --arg user "${ARBITER_USER:-}" --arg pw "${ARBITER_PASSWORD_FILE:-}" \
        '{etcd: ({endpoints: ($e | split(",") | map(select(. != ""))), key: $k, ca_file: $ca,
                 cert_file: $cert, key_file: $key, user: $user, password_file: $pw}
                | with_entries(select(.value != "")))}'
}
