"""Serving many prompts from one frozen T5 over HTTP, in mixed-task batches (`pt-serve`).

- `server`: `serve` (the gin-configured entry point), `build_service`, `BackgroundServer`, the
  persistent compilation cache (`enable_compilation_cache`, `default_cache_dir`).
- `service`: the operations (validation, tokenization, queueing, answers), independent of HTTP.
- `app`: the FastAPI routes (OpenAPI at `/docs`).
- `batcher`: dynamic batching ("mixed" or "per_prompt"), back-pressure, draining.
- `engine`: compiled programs (greedy, beam, score) in fixed shape buckets.
- `warmup`: compiling them in the background, smallest first, with progress (`/readyz`).
- `registry`: prompt names -> rows of the `prompts.RaggedPromptBank`; `loading`: PROMPT_DIR.
- `metrics`: Prometheus metrics.
"""
