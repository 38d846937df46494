# mitmproxy addon: the same header injection moat performs.
def request(flow):
    flow.request.headers["Authorization"] = "Bearer bench-secret"
