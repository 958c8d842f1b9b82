-- wrk script for bench/pingpost. Two modes, chosen by the first script argument:
--
--   ping <shard prefix> <api key>
--       Each wrk thread posts the ping bodies of its own shard file (one JSON body per line,
--       read as it goes) to /api/v1/ping until the run's duration ends. A thread that runs out
--       of bodies starts its file again (those pings are duplicates and answer 409, which the
--       figures show: give more bodies than the run can send).
--   get
--       A plain GET of the URL's path (the bare-endpoint baseline).
--
--   ping <shard prefix> <api key> <pings per second per thread>
--       The same, paced: each thread sends its share of the rate on a fixed schedule (a
--       connection waits for its next slot; once the server falls behind, requests go out as
--       fast as answers come back). This measures latency at a given load rather than at
--       saturation. Keep the connections well above rate × latency, or the pace cannot be kept.
--
-- done() prints one line "BENCH_JSON {...}" with the answers by status and the latency.

-- bench/pacing.lua, beside this script's folder.
local pacer = dofile(debug.getinfo(1, "S").source:sub(2):match("(.*/)[^/]+/") .. "pacing.lua")

local threads = {}
local thread_count = 0

function setup(thread)
   thread:set("id", thread_count)
   table.insert(threads, thread)
   thread_count = thread_count + 1
end

local shard, shard_path, headers
statuses = {}

local function ping_request()
   local body = shard:read("*l")
   if body == nil then
      shard:close()
      shard = assert(io.open(shard_path, "r"))
      body = shard:read("*l")
   end
   return wrk.format("POST", "/api/v1/ping", headers, body)
end

function init(args)
   if args[1] == "ping" then
      shard_path = args[2] .. id .. ".jsonl"
      shard = assert(io.open(shard_path, "r"))
      headers = {
         ["Authorization"] = "Bearer " .. args[3],
         ["Content-Type"] = "application/json",
      }
      request = ping_request
      local rate = tonumber(args[4] or "0")
      if rate > 0 then
         delay = pacer(rate)
      end
   end
end

function response(status, _, _)
   statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, _)
   local by_status = {}
   for _, thread in ipairs(threads) do
      for code, count in pairs(thread:get("statuses") or {}) do
         by_status[code] = (by_status[code] or 0) + count
      end
   end
   local parts = {}
   for code, count in pairs(by_status) do
      table.insert(parts, string.format('"%d": %d', code, count))
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests": %d, "duration_us": %d, "statuses": {%s}, '
         .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
         .. '"latency_us": {"mean": %.1f, "min": %d, "p50": %d, "p90": %d, "p95": %d, '
         .. '"p99": %d, "p999": %d, "max": %d}}\n',
      summary.requests, summary.duration, table.concat(parts, ", "),
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.mean, latency.min, latency:percentile(50), latency:percentile(90),
      latency:percentile(95), latency:percentile(99), latency:percentile(99.9), latency.max))
end
