-- wrk script: POSTs the file $BODY when set (GETs otherwise), with the headers $HEADER_LENGTH (as
-- Inference-Header-Content-Length) and $CONTENT_TYPE when set, and prints one JSON line.
local body = os.getenv("BODY")
if body and body ~= "" then
  local file = assert(io.open(body, "rb"))
  wrk.method = "POST"
  wrk.body = file:read("*a")
  file:close()
end
local header_length = os.getenv("HEADER_LENGTH")
if header_length and header_length ~= "" then wrk.headers["Inference-Header-Content-Length"] = header_length end
local content_type = os.getenv("CONTENT_TYPE")
if content_type and content_type ~= "" then wrk.headers["Content-Type"] = content_type end

function done(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format('{"requests": %d, "rps": %.1f, "p50_ms": %.3f, "p99_ms": %.3f, "non2xx": %d, "errors": %d}\n',
    summary.requests, summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, summary.errors.status, errors))
end
