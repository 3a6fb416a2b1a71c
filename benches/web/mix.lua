-- The request mix of benches/web.sh (issue 24), for wrk: 25 % creates whose names
-- collide (20,000 names: a 409 once a name is taken), 45 % reads of one agent (ids 1 to
-- 1,200: 1,000 seeded, some absent: 404), 15 % lists (a page of 20 among the first 50),
-- 15 % renames of a seeded agent (names colliding likewise).

local seeded = 1000

function setup(thread)
  thread:set("seed", math.random(1, 1e9))
end

function init(args)
  math.randomseed(seed)
end

local json = { ["Content-Type"] = "application/json" }

function request()
  local r = math.random(100)
  if r <= 25 then
    return wrk.format("POST", "/agents", json, '{"name":"w-' .. math.random(1, 20000) .. '"}')
  elseif r <= 70 then
    return wrk.format("GET", "/agents/" .. math.random(1, 1200))
  elseif r <= 85 then
    return wrk.format("GET", "/agents?page=" .. math.random(0, 49) .. "&per_page=20")
  else
    return wrk.format("PATCH", "/agents/" .. math.random(1, seeded), json,
      '{"name":"r-' .. math.random(1, 20000) .. '"}')
  end
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    "RESULT requests=%d seconds=%.3f rps=%.1f p50_us=%d p99_us=%d non2xx=%d socket_errors=%d\n",
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99), errors.status,
    errors.connect + errors.read + errors.write + errors.timeout))
end
