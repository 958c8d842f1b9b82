-- Steady-rate pacing for the wrk scripts of bench/intake and bench/pingpost (loaded with
-- dofile by each). pacer(rate) returns a function for wrk's delay(): the milliseconds until
-- the thread's next slot, at `rate` requests per second for the thread. A thread more than a
-- second behind starts its schedule again rather than bursting to catch up.

local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock_id, bench_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local clock_now = ffi.new("bench_timespec")

local function now_ms()
   ffi.C.clock_gettime(CLOCK_MONOTONIC, clock_now)
   return tonumber(clock_now.tv_sec) * 1000 + tonumber(clock_now.tv_nsec) / 1e6
end

local function pacer(rate)
   local interval_ms = 1000 / rate
   local next_due
   return function()
      local now = now_ms()
      if next_due == nil or next_due < now - 1000 then
         next_due = now
      end
      local wait = next_due - now
      next_due = next_due + interval_ms
      if wait > 0 then
         return wait
      end
      return 0
   end
end

return pacer
