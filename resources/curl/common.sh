# Shared by the curl scripts: talk to a Tandem VMM's REST API over its Unix socket with curl only.
# Set TANDEM_SOCKET (default /run/tandem.sock). Each call prints the JSON answer, if any, and fails
# (exit 1, error chain on stderr) on any HTTP status >= 400.
TANDEM_SOCKET=${TANDEM_SOCKET:-/run/tandem.sock}

api() {
    local method=$1 endpoint=$2 body=${3:-}
    local out status
    out=$(mktemp)
    if [ -n "$body" ]; then
        status=$(curl -sS --unix-socket "$TANDEM_SOCKET" -o "$out" -w '%{http_code}' \
            -X "$method" -H 'Content-Type: application/json' -d "$body" \
            "http://localhost/api/v1/$endpoint")
    else
        status=$(curl -sS --unix-socket "$TANDEM_SOCKET" -o "$out" -w '%{http_code}' \
            -X "$method" "http://localhost/api/v1/$endpoint")
    fi
    local rc=$?
    if [ $rc -ne 0 ]; then rm -f "$out"; echo "curl failed ($rc) on $TANDEM_SOCKET" >&2; return 1; fi
    if [ "$status" -ge 400 ]; then
        echo "$method $endpoint: HTTP $status: $(cat "$out")" >&2
        rm -f "$out"
        return 1
    fi
    cat "$out"
    [ -s "$out" ] && echo
    rm -f "$out"
}

# with_key BODY: prints BODY with {"key": {"path": KEY}} added when KEY (a key file) is set.
with_key() {
    if [ -n "${KEY:-}" ]; then
        jq -c --arg k "$(realpath -m "$KEY")" '. + {key: {path: $k}}' <<<"$1"
    else
        printf '%s\n' "$1"
    fi
}

# listener_security BODY: with_key, plus {"insecure": true} when INSECURE=1 (a listener without a
# key on an address other hosts can reach; refused otherwise).
listener_security() {
    local b
    b=$(with_key "$1")
    if [ "${INSECURE:-}" = 1 ]; then jq -c '. + {insecure: true}' <<<"$b"; else printf '%s\n' "$b"; fi
}
