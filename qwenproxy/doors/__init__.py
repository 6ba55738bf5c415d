"""The front doors that speak another wire format than chat completions: each translates its
request into a chat request for the pipeline and the pipeline's answer (JSON or stream
events) back."""
