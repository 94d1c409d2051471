"""The sofamesh console: the control plane's HTTP API and database (see console/DESIGN.md).

It knows nothing of the agent's code: agents and the UI speak HTTP to it.
"""
