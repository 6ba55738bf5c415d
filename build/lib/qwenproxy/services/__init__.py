"""Services: the proxy's logic (tokens, backends, routing, completions). Built and wired
by `container.build_services`; kept light so that importing one module stays cheap."""
