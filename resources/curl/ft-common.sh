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
