-- wrk script for bench/webhooks.py --client wrk: posts pre-signed Stripe events, each once.
-- The file (first argument) holds, per event, a line "<Stripe-Signature> <body length>"
-- followed by the body's bytes. Run with one thread: the events are not split across threads.
local events = {}
local next_event = 0

function init(args)
  local file = assert(io.open(args[1], "rb"))
  while true do
    local header = file:read("*l")
    if not header then break end
    local signature, length = header:match("^(%S+) (%d+)$")
    events[#events + 1] = { signature, file:read(tonumber(length)) }
  end
  file:close()
end

function request()
  next_event = next_event % #events + 1  -- wraps only if the run outlasts the file (duplicates)
  local event = events[next_event]
  return wrk.format("POST", "/v1/payments/stripe/webhooks",
    { ["Stripe-Signature"] = event[1], ["Content-Type"] = "application/json" }, event[2])
end

function done(summary, latency, requests)
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "status_errors": %d, "socket_errors": %d, ' ..
    '"p50_us": %d, "p95_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max))
end
