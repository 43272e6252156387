"""Model servers. `vllm`: what vLLM needs (spec, command line, environment); `vllm_server`: start, wait for and
stop a vLLM server; `supervise` and `watchdog`: process groups that end with their starter (or outlive it when
asked); `client`: the OpenAI-compatible HTTP client; `fake`: a stand-in server for tests; `base`: the protocols."""
