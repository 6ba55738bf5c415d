"""The upstreams: backends behind one interface, their catalogue of models and facts, qwen-
code's OAuth tokens, and the HTTP/1.1 transport under the shared requests.Session."""
