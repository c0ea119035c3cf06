"""``ptp serve``: an OpenAI-compatible HTTP server for verified decoding (needs the ``serve`` extra).

Modules: ``schema`` (request checks), ``engine`` (the student, prompt encoding, decoding a job),
``worker`` (the one decoding thread and its FIFO queue), ``text`` (streamable text and stop strings),
``responses`` (OpenAI objects), ``metrics`` (Prometheus counters), ``app`` (the Starlette routes).
"""
