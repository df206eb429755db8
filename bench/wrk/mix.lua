-- wrk script of bench/run.sh: rotates over the authorized GETs of a mix file written by
-- `cedargate bench http-mix` (one line per request: method, path and query, bearer token,
-- pre-signed backend assertion, tab-separated).
--
-- Environment:
--   CEDARGATE_BENCH_MIX       the mix file (required)
--   CEDARGATE_BENCH_ASSERTION 1: send the pre-signed assertion (`X-Cedargate-Assertion`), for the
--     targets without the pipeline, where it stands in for the one the gateway adds; 0 (for the
--     full pipeline): clients send only their bearer token, as real clients do
--   CEDARGATE_BENCH_DELAY_MS  mean pause before each request on a connection, in ms (optional).
--     Pauses are exponentially distributed (a Poisson stream per connection, so the merged
--     stream of all connections is Poisson too) and rounded stochastically to wrk's 1 ms timer
--     so their mean stays exact. This bounds the offered rate to about
--     connections / (mean pause + latency); bench/run.sh picks the pause much longer than the
--     latency so the rate is nearly the same for every target, and prints the achieved rate.
--     wrk times a request from its send, so a pause never counts as latency.

local mix_file = os.getenv("CEDARGATE_BENCH_MIX")
local send_assertion = os.getenv("CEDARGATE_BENCH_ASSERTION") ~= "0"
local mean_delay_ms = tonumber(os.getenv("CEDARGATE_BENCH_DELAY_MS") or "")

local requests = {}
local next_index = 0
local thread_count = 0

function setup(thread)
   thread:set("thread_id", thread_count)
   thread_count = thread_count + 1
end

function init(args)
   for line in io.lines(mix_file) do
      local method, path, token, assertion = line:match("^(%S+)\t(%S+)\t(%S+)\t(%S+)$")
      if method then
         local headers = {
            ["Authorization"] = "Bearer " .. token,
            ["Accept"] = "application/json",
            ["User-Agent"] = "cedargate-bench/1 (wrk)",
         }
         if send_assertion then
            headers["X-Cedargate-Assertion"] = assertion
         end
         requests[#requests + 1] = wrk.format(method, path, headers)
      end
   end
   if #requests == 0 then
      error("no request in " .. tostring(mix_file))
   end
   math.randomseed(os.time() + 7919 * (thread_id or 0))
   -- Threads start at different places of the rotation.
   next_index = math.random(#requests) - 1
end

function request()
   next_index = next_index % #requests + 1
   return requests[next_index]
end

if mean_delay_ms and mean_delay_ms > 0 then
   function delay()
      local pause = -math.log(1 - math.random()) * mean_delay_ms
      return math.floor(pause + math.random())
   end
end

function done(summary, latency, _)
   local e = summary.errors
   io.write(string.format(
      "RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d p999_us=%d errors_status=%d errors_connect=%d errors_read=%d errors_write=%d errors_timeout=%d\n",
      summary.requests, summary.duration,
      latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
      e.status, e.connect, e.read, e.write, e.timeout))
end
