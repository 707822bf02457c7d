"""What a grid will do, before and after it runs: the DAG and its keys, the compute plan, the fail-fast checks
and the comparison report. Imports no torch, so `s2d plan`, `s2d report` and a grid with nothing to do start fast.
"""
