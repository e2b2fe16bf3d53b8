#!/usr/bin/env bash
# Run the demo: virtualenv, install, database upgrade, demo data, then the web app,
# the RQ worker with its scheduler and (unless REDIS_URL is set) an embedded Redis.
# Ctrl-C stops them all.
#
# Environment: PORT (5000), REDIS_URL (unset: embedded Redis on REDIS_PORT, default
# the first free port from 6399), DATABASE_URL (unset: SQLite in instance/), PYTHON,
# STRIPE_SECRET_KEY (unset: the offline Stripe sandbox on SANDBOX_PORT, default the
# first free port from 12111, with its webhooks signed for this app).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'run: %s\n' "$*" >&2; exit 1; }

# Python 3.11+: $PYTHON, else the first python3.x on PATH that is recent enough.
if [[ ! -x .venv/bin/python ]]; then
  PYTHON_FOUND=""
  for candidate in ${PYTHON:-} python3 python3.13 python3.12 python3.11; do
    if command -v "$candidate" >/dev/null \
      && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      PYTHON_FOUND=$candidate
      break
    fi
  done
  [[ -n $PYTHON_FOUND ]] || die "Python 3.11 or newer is needed (set PYTHON=/path/to/python3.11)."
  say "Creating .venv with $PYTHON_FOUND and installing requirements-dev.txt (a minute or two)"
  export PYTHON=$PYTHON_FOUND
fi
# Creates .venv if missing; reinstalls only when a requirements file changed.
bash scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"

port_is_free() {
  python - "$1" <<'PY'
import socket, sys
with socket.socket() as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", int(sys.argv[1])))
    except OSError:
        sys.exit(1)
PY
}

# pick_port VAR FIRST WHAT: keep $VAR if set (it must be free), else the first free
# port of the 100 from FIRST; export it.
pick_port() {
  local var=$1 first=$2 what=$3 port
  port=${!var:-}
  if [[ -n $port ]]; then
    port_is_free "$port" || die "$var $port is in use; choose another."
  else
    port=$first
    until port_is_free "$port"; do
      port=$((port + 1))
      ((port < first + 100)) || die "No free port for $what in $first-$((first + 99)); set $var."
    done
  fi
  export "$var=$port"
}

export APP_ENV=${APP_ENV:-development}
export PORT=${PORT:-5000}
export BASE_URL=${BASE_URL:-http://127.0.0.1:$PORT}
port_is_free "$PORT" || die "Port $PORT is in use. Stop what uses it, or choose another: PORT=5001 make run"

processes=(web worker)
if [[ -z ${REDIS_URL:-} ]]; then
  pick_port REDIS_PORT 6399 "embedded Redis"
  export REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
  processes+=(redis)
  redis_note="embedded Redis on 127.0.0.1:$REDIS_PORT (stopped with the rest)"
else
  redis_note="$REDIS_URL"
fi

if [[ -z ${STRIPE_SECRET_KEY:-} ]]; then
  pick_port SANDBOX_PORT 12111 "the Stripe sandbox"
  export SANDBOX_API_KEY=sk_test_sandbox STRIPE_SECRET_KEY=sk_test_sandbox
  export STRIPE_API_BASE="http://127.0.0.1:$SANDBOX_PORT"
  export STRIPE_WEBHOOK_SECRET=${STRIPE_WEBHOOK_SECRET:-whsec_sandbox_demo}
  export SANDBOX_WEBHOOK_SECRET=$STRIPE_WEBHOOK_SECRET
  export SANDBOX_WEBHOOK_URLS="$BASE_URL/v1/payments/stripe/webhooks"
  processes+=(sandbox)
  stripe_note="offline Stripe sandbox at $STRIPE_API_BASE (pay with card 4242 4242 4242 4242)"
else
  stripe_note="Stripe with the configured STRIPE_SECRET_KEY"
fi

say "Upgrading the database (${DATABASE_URL:-SQLite in instance/})"
flask --app wsgi db upgrade
say "Loading the demo data"
seed_output=$(flask --app wsgi seed-demo)
printf '%s\n' "$seed_output"
login_email=$(awk '$1 == "owner" { print $2; exit }' <<<"$seed_output")
login_password=$(sed -n 's/.*password for all: \(.*\)):$/\1/p' <<<"$seed_output")

banner() {
  printf '\n\033[1;32m  Recovery is %s at %s\033[0m\n' "$1" "$BASE_URL"
  printf '  Sign in as %s with password %s\n' "${login_email:-owner@demo.example}" "$login_password"
  printf '  Redis: %s.\n  Stripe: %s.\n  Press Ctrl-C to stop.\n\n' "$redis_note" "$stripe_note"
}
banner "starting"

# Say it again once the app answers, so the URL is not lost in the start-up logs.
# The watcher gives up when honcho (this shell's PID after exec) is gone or after a minute;
# it is started in a subshell that exits at once, so no zombie is left under honcho.
parent=$$
( (
  for _ in $(seq 120); do
    kill -0 "$parent" 2>/dev/null || exit 0
    if python -c 'import sys, urllib.request as u; u.urlopen(sys.argv[1], timeout=1)' \
      "$BASE_URL/healthz" 2>/dev/null; then
      banner "ready"
      exit 0
    fi
    sleep 0.5
  done
) & )

exec honcho -f Procfile.dev start "${processes[@]}"
