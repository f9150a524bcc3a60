"""valqd's benchmark suite: valqd against Valkey (Lua and Streams) and beanstalkd.

Run it with `python -m bench` (or `python bench/run.py`); `python -m bench --help` lists
the options. It starts every server itself on loopback ports, drives the same job cycle
against each in the same run, stops them and writes a Markdown report with PNG charts.
"""
