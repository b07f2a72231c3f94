-- wrk script: POST /v1/jobs with a bearer token; counts responses that are not 201.
wrk.method = "POST"
wrk.body = '{"argv": ["true"], "tenant": "bench", "cpu": 0.1, "memory_bytes": 16777216}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench-admin-token"

local threads = {}
function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  bad = 0
end

function response(status, headers, body)
  if status ~= 201 then bad = bad + 1 end
end

function done(summary, latency, requests)
  local total = 0
  for _, t in ipairs(threads) do total = total + t:get("bad") end
  io.write(string.format("non_201=%d\n", total))
end
