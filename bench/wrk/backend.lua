-- wrk script of bench/backend.sh: rotates over the requests of a file (one per line: method,
-- path and query, bearer token, JSON body or "-", tab-separated) and reports the counts and
-- latency percentiles in one RESULT line.
--
-- Environment: CEDARGATE_BENCH_REQUESTS, the request file (required).

local file = os.getenv("CEDARGATE_BENCH_REQUESTS")
local requests = {}
local next_index = 0
local thread_count = 0

function setup(thread)
   thread:set("thread_id", thread_count)
   thread_count = thread_count + 1
end

function init(args)
   for line in io.lines(file) do
      local method, path, token, body = line:match("^(%S+)\t(%S+)\t(%S+)\t(.+)$")
      if method then
         local headers = {
            ["Authorization"] = "Bearer " .. token,
            ["Accept"] = "application/json",
         }
         if body == "-" then
            body = nil
         else
            headers["Content-Type"] = "application/json"
         end
         requests[#requests + 1] = wrk.format(method, path, headers, body)
      end
   end
   if #requests == 0 then
      error("no request in " .. tostring(file))
   end
   next_index = (thread_id or 0) * 7919 % #requests
end

function request()
   next_index = next_index % #requests + 1
   return requests[next_index]
end

function done(summary, latency, _)
   local e = summary.errors
   io.write(string.format(
      "RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d errors_status=%d errors_socket=%d\n",
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
      e.status, e.connect + e.read + e.write + e.timeout))
end
