"""The HTTP/1.1 transport under the shared requests.Session: request and answer heads (parsed
by httptools), answer bodies (chunked, gzip, deflate, size caps), the pool of idle
connections and CONNECT tunnels through an upstream proxy."""
