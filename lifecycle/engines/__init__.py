"""Model servers: start, health-check and stop them. `vllm` is the one module that knows how vLLM runs."""
