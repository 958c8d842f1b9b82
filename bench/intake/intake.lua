-- wrk script for bench/intake. Two modes, chosen by the first script argument:
--
--   intake <shard prefix> <api key> <marker prefix> <rate> <bodies in shard 0> <bodies in 1> ...
--       Each wrk thread posts the lead bodies of its own shard file (one JSON body per line,
--       read as it goes, so memory stays flat), counts the answers by status, and stops once
--       every body of its shard has been answered. It then writes "<marker prefix><thread>"
--       so the driver knows when to end wrk. Connections that find the shard empty send
--       GET /healthz, 20 ms apart, until the last posts are answered. <rate> is 0 (as fast as
--       answers come back) or this thread's leads per second: each post then waits for its
--       slot on a fixed schedule (latency at a given load rather than at saturation).
--   get
--       A plain GET of the URL's path (the bare-endpoint baseline).
--
-- done() prints one line "BENCH_JSON {...}" with the figures for the driver.

local threads = {}
local thread_count = 0

function setup(thread)
   thread:set("id", thread_count)
   table.insert(threads, thread)
   thread_count = thread_count + 1
end

-- bench/pacing.lua, beside this script's folder.
local pacer = dofile(debug.getinfo(1, "S").source:sub(2):match("(.*/)[^/]+/") .. "pacing.lua")

local shard, headers, marker, expected, filler, paced
local exhausted = false
local first_call = true
answered = 0
statuses = {}

local function intake_request()
   -- wrk calls request() once on thread 0 before the run to check the script; that call must
   -- not use up a body.
   if first_call then
      first_call = false
      if id == 0 then
         return filler
      end
   end
   local body = shard:read("*l")
   if body == nil then
      exhausted = true
      return filler
   end
   return wrk.format("POST", "/api/v1/leads", headers, body)
end

local function intake_delay()
   if exhausted then
      return 20
   end
   if paced == nil then
      return 0
   end
   return paced()
end

local function intake_response(status, _, _)
   if status == 200 then
      return -- a filler's answer
   end
   statuses[status] = (statuses[status] or 0) + 1
   answered = answered + 1
   if answered == expected then
      local f = assert(io.open(marker .. id, "w"))
      f:write(tostring(answered))
      f:close()
      wrk.thread:stop()
   end
end

function init(args)
   if args[1] == "intake" then
      shard = assert(io.open(args[2] .. id .. ".jsonl", "r"))
      headers = {
         ["Authorization"] = "Bearer " .. args[3],
         ["Content-Type"] = "application/json",
      }
      marker = args[4]
      local rate = tonumber(args[5])
      if rate > 0 then
         paced = pacer(rate)
      end
      expected = tonumber(args[6 + id])
      filler = wrk.format("GET", "/healthz")
      request = intake_request
      delay = intake_delay
      response = intake_response
   end
end

function done(summary, latency, _)
   local by_status = {}
   local answered_posts = 0
   for _, thread in ipairs(threads) do
      answered_posts = answered_posts + (thread:get("answered") or 0)
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
      'BENCH_JSON {"requests": %d, "duration_us": %d, "answered_posts": %d, '
         .. '"statuses": {%s}, "errors": {"connect": %d, "read": %d, "write": %d, '
         .. '"status": %d, "timeout": %d}, "latency_us": {"mean": %.1f, "min": %d, '
         .. '"p50": %d, "p90": %d, "p95": %d, "p99": %d, "p999": %d, "max": %d}}\n',
      summary.requests, summary.duration, answered_posts, table.concat(parts, ", "),
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.mean, latency.min, latency:percentile(50), latency:percentile(90),
      latency:percentile(95), latency:percentile(99), latency:percentile(99.9), latency.max))
end
