-- Cache hits: the same input every time (the first request fills the cache).
dofile(os.getenv("WEDGE_LUA_DIR") .. "/report.lua")
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"default","input":"How do I reset my password on the edge node?"}'
done = function(summary, latency, requests) report(summary, latency) end
