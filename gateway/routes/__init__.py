"""The ASGI entry and the routes: the forwarded routes (path safety, the policies around
the relay), the gateway's own endpoints, CORS, request ids, the admin-scope guard, and the one
error response every refusal goes out as.

Routes run the policies and sinks handed to them; they know nothing of the admin surface, the
composition or the process.
"""
