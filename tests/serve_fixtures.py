"""Helpers of the serve tests: a stdlib HTTP client for the server on 127.0.0.1."""

import http.client
import json


def call(url, method, path, body=None, headers=None):
    """One HTTP request; returns (status, parsed JSON or text, headers)."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=120)
    if isinstance(body, dict):
        body, headers = json.dumps(body), {"Content-Type": "application/json", **(headers or {})}
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    data = response.read()
    connection.close()
    kind = response.getheader("Content-Type", "")
    value = json.loads(data) if kind.startswith("application/json") else data.decode()
    return response.status, value, dict(response.getheaders())
