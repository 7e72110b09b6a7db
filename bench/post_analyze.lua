-- wrk script: POST /analyze with a small lyrics body (the same for both servers).
wrk.method = "POST"
wrk.path = "/analyze"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"track_id": "t-1", "text": "I walk the night\\nI hold the light\\n' ..
	'I walk the night\\nand the city hums along\\n"}'
