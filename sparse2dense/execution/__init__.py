"""Running nodes: one node in this process (node_runner), or launched in its own process group (launch ->
launched), under accelerate or as a Ray gang over machines, with clean stops and node leases.
"""
