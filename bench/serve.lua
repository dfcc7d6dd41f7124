-- wrk script for bench/serve.py: POSTs the realistic request bodies in turn and reports
-- latency percentiles as one JSON line.
-- Usage: wrk -s bench/serve.lua URL -- BODIES_FILE [API_KEY]
-- BODIES_FILE holds one JSON request body per line. Errors = non-2xx/3xx answers + socket errors.

local bodies = {}
local headers = {["Content-Type"] = "application/json"}
local counter = 0

function init(args)
  for line in io.lines(args[1]) do
    if #line > 0 then bodies[#bodies + 1] = line end
  end
  if #bodies == 0 then error("no request bodies in " .. args[1]) end
  if args[2] then headers["X-API-Key"] = args[2] end
  counter = math.random(#bodies) - 1  -- threads start at different bodies
end

function request()
  counter = counter % #bodies + 1
  return wrk.format("POST", "/predict", headers, bodies[counter])
end

function done(summary, latency, requests)
  local e = summary.errors
  local errors = e.status + e.connect + e.read + e.write + e.timeout
  io.write(string.format(
    '{"p50_ms": %.4f, "p99_ms": %.4f, "max_ms": %.4f, "requests": %d, "duration_s": %.4f, "errors": %d}\n',
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000,
    summary.requests, summary.duration / 1e6, errors))
end
