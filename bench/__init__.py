"""The benchmark: one command starts Redis, the gateway and a multi-process load generator.

``python -m bench SCENARIO`` (see ``bench/README.md``). Everything runs on loopback, is
bounded in time, and ends with a table and one JSON line.
"""
